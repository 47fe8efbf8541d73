"""Runs one errands worker in this process, configured by ERRANDS_* variables.

Fault tests start it as a subprocess (in its own session, so that a test can
signal or kill the whole process group) and then stop, pause or kill it.
Arguments are the queues to serve (none: every queue).
"""

import sys

import sample_jobs  # noqa: F401  (registers the jobs)

from errands.worker import Worker

if __name__ == "__main__":
    sys.exit(Worker(queues=sys.argv[1:]).run())
