"""Composite tools: workflows of tool calls across backends, served as tools (issue 17).

config_workflows.py (outside, a leaf)  definitions, checked at load
templates.py   sandboxed Jinja2 over params, steps.<id> and a for_each's item
executor.py    one run: the steps as a graph, bounded parallelism, retries, timeouts
validation.py  checks against the live catalogue; annotations derived from the steps
provider.py    WorkflowTools, the router's provider: each step a call through the router
cli.py         `vmcp workflow run NAME --arg k=v`
"""

from vmcp_opt.workflows.executor import RunReport, StepReport, WorkflowRun
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE, WorkflowTools
from vmcp_opt.workflows.validation import derived_annotations, unknown_tools

__all__ = [
    "WORKFLOW_SOURCE",
    "RunReport",
    "StepReport",
    "WorkflowRun",
    "WorkflowTools",
    "derived_annotations",
    "unknown_tools",
]
