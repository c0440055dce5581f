"""The e2e pika consumer, reconnecting: it outlives a broker restart as a real worker would.

The test kit's pika_worker.py exits when its connection drops; a deployed worker is
restarted by its kubelet, which the pod runner does not do. This wrapper runs the same
`Worker` again after a lost connection (a bounded number of times, a second apart), so a
broker restart tests the operator, not the worker. Messages in hand when the connection
dropped were not acked: the broker delivers them again (at least once).
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import pika.exceptions

from queuescaler_testkit.workers.pika_worker import Worker

MAX_RECONNECTS = 120
"""About two minutes of broker outage at most, then the worker gives up (a finding)."""


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    worker = Worker()
    signal.signal(signal.SIGTERM, worker.ask_to_stop)
    signal.signal(signal.SIGINT, worker.ask_to_stop)
    for attempt in range(MAX_RECONNECTS):
        try:
            code: int = worker.run()
            return code
        except pika.exceptions.AMQPError as error:
            if worker.stopping:
                return 0
            logging.info("connection lost (%r): reconnecting, attempt %d", error, attempt + 1)
            time.sleep(1.0)
    return 1


if __name__ == "__main__":
    sys.exit(main())
