"""vmcp-opt: a Virtual MCP Server with semantic tool discovery."""

__version__ = "0.1.0"
