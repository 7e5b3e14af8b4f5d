"""The Google Cloud clients both roles use, from their settings.

Constructed on first use rather than at import, so that the registry function answers its
ping before any of them loads.
"""

from __future__ import annotations

from google.cloud import firestore, tasks_v2
from google.cloud.storage import Bucket, Client

from nixery.gcp.firestore_state import FirestoreDatabase
from nixery.gcp.settings import GcpSettings


def firestore_database(gcp: GcpSettings) -> FirestoreDatabase:
    client = firestore.Client(project=gcp.project, database=gcp.database)
    return FirestoreDatabase(client, gcp.prefix, timeout=gcp.backend_timeout)


def bucket(gcp: GcpSettings) -> Bucket:
    return Client(project=gcp.project).bucket(gcp.bucket)


def tasks_client(emulator: str | None) -> tasks_v2.CloudTasksClient:
    """A Cloud Tasks client; with ``emulator`` (host:port), one for the local emulator."""
    if emulator:
        import grpc
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        channel = grpc.insecure_channel(emulator)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    return tasks_v2.CloudTasksClient()
