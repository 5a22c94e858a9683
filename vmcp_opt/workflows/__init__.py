"""Composite tools: workflows of tool calls across backends, served as tools (issue 17).

config/workflows.py (outside, a leaf)  definitions, checked at load
templates.py   sandboxed Jinja2 over params, steps.<id> and a for_each's item
executor.py    one run: the steps as a graph, bounded parallelism, retries, timeouts
validation.py  checks against the live catalogue; annotations derived from the steps
provider.py    WorkflowTools, the router's provider: each step a call through the router
rounds.py      runs of 2026-07-28 clients waiting for answers to elicitation steps (InputRequiredResult)
budget.py      what one run may spend in calls, the runs it nests included
cli.py         `vmcp workflow run NAME --arg k=v`
"""

# Nothing imported here: `vmcp workflow` loads its CLI without the gateway's import cost.
