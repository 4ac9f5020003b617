"""The specification's import line for the execution service:
``from tool_execution_service import ToolExecutionService``.

The same names as ``from runtime import ...``; the code lives in ``runtime/jobs_api.py``.
(``JobPriority`` too: the specification's ``execute_async`` example uses it.)
"""

from runtime.jobs_api import JobPriority, ToolExecutionService

__all__ = ["JobPriority", "ToolExecutionService"]
