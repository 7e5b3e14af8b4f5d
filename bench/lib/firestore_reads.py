"""Counts the Firestore documents a service reads and writes, for bench/gcp_costs.py.

    python -m bench.lib.firestore_reads PROGRAM [ARGUMENT...]

runs PROGRAM (a Python script, such as the virtualenv's `functions-framework` or `gunicorn`)
in this process, as its shebang would, after installing the counter when the environment
names a log (NIXERY_BENCH_FIRESTORE_LOG): the services are measured as they run, nothing
added to their code (their sys.path starts with the directory this runs from, the
repository's root, where the script's own would be the virtualenv's bin/, which holds no
modules). Forked workers inherit the counter.

The counter waits for the Firestore client library's gRPC transports to be imported, then
makes their RPC properties hand out wrapped stubs, which append one JSON line per call to
the log. A read is one document asked for (BatchGetDocuments, GetDocument) or returned
(RunQuery, Listen, ListDocuments); a write is one document in a Commit or BatchWrite, or a
single-document call. Every line carries the pid, the session id (the service's, since each
service runs in a session of its own) and the time.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import runpy
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

LOG_VAR = "NIXERY_BENCH_FIRESTORE_LOG"
_PREFIX = "google.cloud.firestore_v1.services.firestore.transports."
# The transport modules, with the class in each and whether its stubs are coroutines.
_TRANSPORTS = {
    _PREFIX + "grpc": ("FirestoreGrpcTransport", False),
    _PREFIX + "grpc_asyncio": ("FirestoreGrpcAsyncIOTransport", True),
}
_RPCS = (
    "get_document", "list_documents", "update_document", "delete_document",
    "batch_get_documents", "begin_transaction", "commit", "rollback", "run_query",
    "execute_pipeline", "run_aggregation_query", "partition_query", "write", "listen",
    "list_collection_ids", "batch_write", "create_document",
)  # fmt: skip
_STREAMED = {"run_query", "run_aggregation_query", "listen"}

# A stub: a gRPC callable taking the request message (proto-plus; its type depends on the
# RPC, which is why requests and answers are Any here) and the call's options.
Stub = Callable[..., Any]


def _emit(log: str, **fields: object) -> None:
    """Appends one line with one write(2) of an O_APPEND descriptor, so that the lines of
    concurrent threads and processes never interleave."""
    fields.update(pid=os.getpid(), sid=os.getsid(0), t=time.time())
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(fields) + "\n").encode())
    finally:
        os.close(fd)


def _doc(name: str) -> str:
    """A document's path below the database's `documents/`."""
    return name.split("/documents/", 1)[-1]


def _in(message: Any, field: str) -> bool:
    """Whether a proto-plus message has `field` set (False for one without such a field)."""
    try:
        return field in message
    except TypeError:
        return False


def _record(log: str, rpc: str, request: Any) -> None:
    reads, writes, tx = 0, 0, False
    docs: list[str] = []
    if rpc == "listen":
        pass  # a stream of requests: the documents are counted as they come
    elif rpc == "batch_get_documents":
        docs = [_doc(d) for d in request.documents]
        reads = len(docs)
        tx = bool(request.transaction) or _in(request, "new_transaction")
    elif rpc == "get_document":
        docs, reads = [_doc(request.name)], 1
        tx = bool(request.transaction)
    elif rpc in ("commit", "batch_write"):
        docs = [_doc(w.update.name or w.delete or w.transform.document) for w in request.writes]
        writes = len(docs)
        tx = bool(getattr(request, "transaction", b""))
    elif rpc in ("create_document", "update_document", "delete_document"):
        writes = 1
    elif rpc == "run_query":
        tx = bool(request.transaction) or _in(request, "new_transaction")
    _emit(log, rpc=rpc, reads=reads, writes=writes, docs=docs, tx=tx)


class _Results:
    """A streamed answer, passed through; each document in it is logged as one read."""

    def __init__(self, log: str, call: Iterator[Any], rpc: str) -> None:
        self._log = log
        self._call = call
        self._rpc = rpc

    def __iter__(self) -> _Results:
        return self

    def __next__(self) -> Any:
        response = next(self._call)
        try:
            doc = None
            if self._rpc == "run_query" and _in(response, "document"):
                doc = _doc(response.document.name)
            elif self._rpc == "listen" and _in(response, "document_change"):
                doc = _doc(response.document_change.document.name)
            elif self._rpc == "run_aggregation_query" and _in(response, "result"):
                doc = "(aggregation)"
            if doc is not None:
                _emit(self._log, rpc=self._rpc + " result", reads=1, writes=0, docs=[doc], tx=False)
        except Exception as e:
            _emit(self._log, rpc=self._rpc + " result", error=repr(e))
        return response

    def __getattr__(self, name: str) -> Any:
        """The call's other methods (cancel, trailing metadata...), as the client uses them."""
        return getattr(self._call, name)


def _wrap(log: str, rpc: str, stub: Stub, is_async: bool) -> Stub:
    """The stub, logging each call; a failure to log is logged, never raised to the client."""

    def call(request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            _record(log, rpc, request)
        except Exception as e:
            _emit(log, rpc=rpc, error=repr(e))
        result = stub(request, *args, **kwargs)
        if is_async:
            return result
        if rpc in _STREAMED:
            return _Results(log, result, rpc)
        if rpc == "list_documents":
            try:
                names = [_doc(d.name) for d in result.documents]
                _emit(log, rpc=rpc + " result", reads=len(names), writes=0, docs=names, tx=False)
            except Exception as e:
                _emit(log, rpc=rpc + " result", error=repr(e))
        return result

    return call


def _getter(
    log: str, rpc: str, fget: Callable[[Any], Stub], is_async: bool
) -> Callable[[Any], Stub]:
    """The RPC property's new getter. The client looks its wrapped methods up by stub, so each
    wrapped stub must be handed out once: it is kept beside the transport's own stubs."""
    key = "_bench_counted_" + rpc

    def get(transport: Any) -> Stub:
        stubs: dict[str, Stub] = transport._stubs
        if key not in stubs:
            stubs[key] = _wrap(log, rpc, fget(transport), is_async)
        return stubs[key]

    return get


def _patch(log: str, cls: type, is_async: bool) -> None:
    for rpc in _RPCS:
        prop = cls.__dict__.get(rpc)
        if isinstance(prop, property) and prop.fget is not None:
            setattr(cls, rpc, property(_getter(log, rpc, prop.fget, is_async)))


class _PatchingLoader(importlib.abc.Loader):
    """A transport module's own loader, patching the transport class once the module ran."""

    def __init__(self, log: str, loader: importlib.abc.Loader, name: str) -> None:
        self._log = log
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def __getattr__(self, name: str) -> Any:
        """The loader's other methods (get_source, get_resource_reader...), as they were."""
        return getattr(self._loader, name)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        cls_name, is_async = _TRANSPORTS[self._name]
        _patch(self._log, getattr(module, cls_name), is_async)
        # Where this service's nixery came from: which code is measured.
        nixery = sys.modules.get("nixery")
        _emit(
            self._log, event="patched", module=self._name, nixery=getattr(nixery, "__file__", None)
        )


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the transport modules as the other finders would, with a patching loader."""

    def __init__(self, log: str) -> None:
        self._log = log

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _TRANSPORTS:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchingLoader(self._log, spec.loader, fullname)
        return spec


def install(log: str) -> None:
    """Counts this process's Firestore calls (and its forked children's) into `log`."""
    sys.meta_path.insert(0, _Finder(log))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    log = os.environ.get(LOG_VAR)
    if log:
        install(log)
    program = sys.argv[1]
    sys.argv = sys.argv[1:]  # as the program sees them when run itself
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
