"""Every state port of one database as one object, so that one contract suite covers each
adapter and the fake alike; the product itself never combines them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.cloud import firestore

from nixery.gcp.firestore_state import FirestoreBuildRecords, FirestoreDatabase, FirestoreInventory
from nixery.local.sqlite_state import SqliteDatabase, SqliteInventory


class AllPorts:
    """Each attribute from the first part that has it; ``inventory`` is the gc's part, whose
    ``manifest`` the image ports' own would otherwise hide."""

    def __init__(self, *parts: object, inventory: object) -> None:
        self._parts = (*parts, inventory)
        self.inventory = inventory

    def __getattr__(self, name: str) -> Any:
        for part in self._parts:
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(name)


def sqlite_ports(path: Path, **options: Any) -> AllPorts:
    database = SqliteDatabase(path, **options)
    stores = database.ports()
    return AllPorts(
        stores.images, stores.layers, stores.reports, stores.names,
        inventory=SqliteInventory(database),
    )  # fmt: skip


def firestore_ports(client: firestore.Client, prefix: str, **options: Any) -> AllPorts:
    database = FirestoreDatabase(client, prefix, **options)
    stores = database.ports()
    return AllPorts(
        stores.images, stores.layers, stores.reports, stores.names,
        FirestoreBuildRecords(database), inventory=FirestoreInventory(database),
    )  # fmt: skip
