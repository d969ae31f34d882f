"""Starting a command quickly.

Without PREFECT_API_URL, a command runs on Prefect's ephemeral API: a server Prefect starts in a process of its
own, which takes seconds (it imports the whole server and prepares its database) while this process only waits
for it. The first step needs TensorFlow, which also takes seconds to import: the command imports it meanwhile.
Before anything starts, a watchdog is set up, so that neither that server nor any other process the command starts
outlives it (`core/watchdog.py`).
"""

from __future__ import annotations

import importlib
import threading

from core.watchdog import watch_this_process


def start_prefect_api_while_importing(*modules: str) -> None:
    """Import `modules` while Prefect's ephemeral API starts (when no PREFECT_API_URL is set); return when both are
    done. A failure to start the API is left to the flow run, which reports it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    watch_this_process()
    starter = None
    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        # Imported here, so that the thread below imports nothing while `modules` are imported.
        import prefect.server.api.server  # noqa: F401
        from prefect.client.orchestration import get_client

        def start() -> None:
            try:
                get_client(sync_client=True)  # starts the ephemeral API and waits until it answers
            except Exception:
                pass

        starter = threading.Thread(target=start, name="prefect-api-start", daemon=True)
        starter.start()
    for module in modules:
        importlib.import_module(module)
    if starter is not None:
        starter.join()
