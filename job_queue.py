"""The specification's import line for the job queue: ``from job_queue import init_queue, JobPriority``.

The same names as ``from runtime import ...``; the code lives in ``runtime/jobs_api.py``.
"""

from runtime.jobs_api import JobPriority, JobQueue, init_queue

__all__ = ["JobPriority", "JobQueue", "init_queue"]
