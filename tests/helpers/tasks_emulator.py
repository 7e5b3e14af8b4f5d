"""gcloud-tasks-emulator dispatching up to N tasks of a queue at once, as Cloud Tasks does
up to a queue's max_concurrent_dispatches; the emulator itself sends one at a time.

    .venv-tasks/bin/python tests/helpers/tasks_emulator.py N start -p PORT -q -d QUEUE

Run by the emulator's own interpreter (its virtualenv pins protobuf < 5), so it imports
nothing of the project. Each dispatch is the emulator's own request (`_make_task_request`);
a task answered 4xx or 5xx goes back to the end of its queue, as the emulator does, for as
many retries as it allows. Logs the most tasks in flight at once ("in flight: N").
"""

import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib import error

from gcloud_tasks_emulator import server
from gcloud_tasks_emulator.__main__ import main

log = logging.getLogger("tasks-dispatch")


def due_at(task):
    return task.schedule_time.timestamp()


def concurrent(dispatches):
    lock = threading.Lock()
    flying = set()
    peak = [0]

    def dispatch(state, queue, task):
        status = 500
        try:
            task.dispatch_count += 1
            host, port = state._target_host, state._target_port
            status = server._make_task_request(queue, task, host, port).status
        except error.HTTPError as e:
            status = e.code
        except Exception:
            log.exception("dispatching %s", task.name)
        with lock:
            flying.discard(task.name)
            retries = state._max_retries
            if 400 <= status < 600 and (retries < 0 or task.dispatch_count <= retries):
                state._queue_tasks[queue].append(task)

    def process_queue(self, queue):
        state = self._state
        pool = ThreadPoolExecutor(dispatches)
        while self._is_running.is_set():
            if queue not in state._queues or queue not in state._queue_tasks:
                break
            with lock:
                tasks = state._queue_tasks[queue]
                now = time.time()
                while tasks and len(flying) < dispatches:
                    due = [t for t in tasks if not t.schedule_time or due_at(t) <= now]
                    if not due:
                        break
                    task = due[0]
                    tasks.remove(task)
                    flying.add(task.name)
                    if len(flying) > peak[0]:
                        peak[0] = len(flying)
                        print(f"in flight: {peak[0]}", flush=True)
                    pool.submit(dispatch, state, queue, task)
            time.sleep(server._LOOP_SLEEP_TIME)

    return process_queue


if __name__ == "__main__":
    server.Processor._process_queue = concurrent(int(sys.argv.pop(1)))
    sys.exit(main())
