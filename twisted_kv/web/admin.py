# -*- test-case-name: tests.test_admin -*-
"""
C{/admin}: backups of the whole store, through any node (C{docs/backup.md}).

  - C{GET /admin/snapshot}: C{{"partitions": P}}, the partitions to dump.
  - C{GET /admin/snapshot/partitions/{n}[?dump=ID&after=KEY][&limit=N]}:
    a page of partition C{n}'s dump.  Without C{dump}, the partition's
    primary takes a new dump, as of the moment the request reaches it (every
    write acknowledged before is in it); the next pages name the C{dump} and
    the C{after} the previous page gave as C{next}.  The answer is
    C{{"partition", "dump", "as_of", "taken_at", "records", "next"}}, each
    record C{{"ns", "key", "value" (base64), "content_type", "version",
    "ttl"}} (C{ttl}: the seconds the key had left, or C{null}); C{next} is
    C{null} after the last page.  C{410} (C{snapshot_expired}): the dump is
    no longer held (its primary moved, or it sat idle for a minute): dump
    the partition again from its start.
  - C{POST /admin/restore}, JSON C{{"records": [...]}} of such records:
    each is written through the store as an ordinary replicated write, with
    its content type and the time to live it had left (one whose time ran
    out is skipped), replacing whatever the key held.  The answer,
    C{{"written": N, "skipped": M}}, comes once every write of the batch is
    acknowledged; a failure answers with the first error, and the batch may
    be sent again (writing a record twice is harmless).  The records of one
    batch are written concurrently: whoever needs an order (chunks before
    the manifests naming them) sends the batches in that order.
"""

from __future__ import annotations

import json
from typing import Optional

from klein import Klein
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.keyspace import FILES, USER, check_user_key
from twisted_kv.errors import InvalidRequest
from twisted_kv.interfaces import IKeyValue, ISnapshotSource
from twisted_kv.web.errors import JSON_TYPE, render_failure, to_json

DEFAULT_PAGE = 500
MAX_PAGE = 10_000
# The most records one restore request may carry.
MAX_RESTORE_BATCH = 10_000


def _text_argument(request: IRequest, name: bytes) -> Optional[str]:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name.decode()} is not UTF-8") from None


def _page_limit(request: IRequest) -> int:
    text = _text_argument(request, b"limit")
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


def _restored_records(body: bytes) -> list[BackupRecord]:
    """
    The records of a restore request's body.

    @raise InvalidRequest: it is not a JSON object with a list of valid
        records, at most L{MAX_RESTORE_BATCH}, in the namespaces of client
        keys and files.
    """
    try:
        fields = json.loads(body)
        if not isinstance(fields, dict) or not isinstance(fields.get("records"), list):
            raise ValueError("the body is not {\"records\": [...]}")
        records = [BackupRecord.from_json(record) for record in fields["records"]]
    except ValueError as error:
        raise InvalidRequest(f"bad restore request: {error}") from None
    if len(records) > MAX_RESTORE_BATCH:
        raise InvalidRequest(f"at most {MAX_RESTORE_BATCH} records a request")
    for record in records:
        namespace = record.key[:1]
        if namespace == USER:
            check_user_key(record.key[1:])
        elif namespace != FILES:
            raise InvalidRequest(f"unknown namespace {namespace!r}")
    return records


class AdminAPI:
    """
    The Klein application mounted at C{/admin}.
    """

    _app = Klein()

    def __init__(self, kv: IKeyValue, snapshots: ISnapshotSource) -> None:
        """
        @param kv: where restored records are written.
        @param snapshots: where partitions are dumped.
        """
        self._kv = kv
        self._snapshots = snapshots

    def resource(self) -> IResource:
        return self._app.resource()

    @_app.route("/snapshot", methods=["GET"])
    def _partitions(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE)
        return to_json({"partitions": self._snapshots.partition_count()})

    @_app.route("/snapshot/partitions/<int:partition>", methods=["GET"])
    def _dump(self, request: IRequest, partition: int) -> Deferred[bytes]:
        limit = _page_limit(request)
        dump_id = _text_argument(request, b"dump")
        after = _text_argument(request, b"after")
        if after is not None and dump_id is None:
            raise InvalidRequest("after needs the dump it continues")

        def answer(page: DumpPage) -> bytes:
            request.setHeader(b"Content-Type", JSON_TYPE)
            return to_json(page.to_json())

        return self._snapshots.dump_page(partition, dump_id, after, limit).addCallback(answer)

    @_app.route("/restore", methods=["POST"])
    def _restore(self, request: IRequest) -> Deferred[bytes]:
        records = _restored_records(request.content.read())
        writes = [
            self._kv.put(record.key, record.value, record.content_type, record.ttl)
            for record in records
            if record.ttl is None or record.ttl > 0
        ]

        def answer(results: list) -> bytes:
            for ok, result in results:
                if not ok:
                    return result
            request.setHeader(b"Content-Type", JSON_TYPE)
            return to_json({"written": len(writes), "skipped": len(records) - len(writes)})

        return DeferredList(writes, consumeErrors=True).addCallback(answer)

    @_app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return render_failure(request, failure)


def admin_resource(kv: IKeyValue, snapshots: ISnapshotSource) -> IResource:
    """
    The C{/admin} resource; mount it as the C{admin} child of the site's
    root.
    """
    return AdminAPI(kv, snapshots).resource()
