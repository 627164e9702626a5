"""Outbound channels: webhooks, Web Push and e-mail, drained by one worker.

``base`` is the contract (jobs, results, the job queue), one module per
channel, and ``worker`` runs the lanes.  Nothing here is on the live
delivery path: publishing enqueues jobs, the worker sends them.
"""

from tidings.channels.base import Channel, Job, JobQueue, Result
from tidings.channels.worker import Lane, Worker

__all__ = ["Channel", "Job", "JobQueue", "Lane", "Result", "Worker"]
