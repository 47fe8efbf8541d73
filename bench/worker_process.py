"""One errands worker for the benchmark, configured by ``ERRANDS_*`` variables.

The benchmark starts it as a subprocess so that its CPU time and memory (and its
children's) can be measured apart from the benchmark's own.
"""

import sys

import bench_jobs  # noqa: F401  (registers the jobs)

from errands.worker import Worker

if __name__ == "__main__":
    sys.exit(Worker(queues=sys.argv[1:]).run())
