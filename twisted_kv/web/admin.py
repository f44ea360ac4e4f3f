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
  - C{POST /admin/restore}, JSON C{{"id": ID, "records": [...]}} of such
    records: each is written through the store as an ordinary replicated
    write, with its content type and the time to live it had left (one
    whose time ran out is skipped), replacing whatever the key held.  The
    answer, C{{"written": N, "skipped": M}}, comes once every write of the
    batch is acknowledged; a failure answers with the first error.  The
    optional C{id} (letters, digits, C{_} and C{-}) names the batch: sent
    again under the same id with the same records, after a failure or a
    lost answer, no record already written is written a second time (so a
    late copy of the first attempt can never land after a newer write).
    The records of one batch are written concurrently, each partition's in
    one go at its primary: whoever needs an order (chunks before the
    manifests naming them) sends the batches in that order.
"""

from __future__ import annotations

import json
import re
from typing import Optional

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from twisted_kv.core.backup import BackupRecord, DumpPage
from twisted_kv.core.keyspace import FILES, USER, check_user_key
from twisted_kv.errors import InvalidRequest
from twisted_kv.interfaces import ISnapshotSource
from twisted_kv.web.errors import JSON_TYPE, render_failure, to_json

DEFAULT_PAGE = 500
MAX_PAGE = 10_000
# The most records one restore request may carry.
MAX_RESTORE_BATCH = 10_000
# What a restore batch's id may be.
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


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


def _restored_records(body: bytes) -> tuple[Optional[str], list[BackupRecord]]:
    """
    The batch id and the records of a restore request's body.

    @raise InvalidRequest: it is not a JSON object with a list of valid
        records, at most L{MAX_RESTORE_BATCH}, of distinct keys in the
        namespaces of client keys and files, and perhaps a valid id.
    """
    try:
        fields = json.loads(body)
        if not isinstance(fields, dict) or not isinstance(fields.get("records"), list):
            raise ValueError("the body is not {\"records\": [...]}")
        batch_id = fields.get("id")
        if batch_id is not None and not (isinstance(batch_id, str) and BATCH_ID.match(batch_id)):
            raise ValueError("the id is not 1 to 100 letters, digits, _ or -")
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
    if len({record.key for record in records}) != len(records):
        raise InvalidRequest("a key appears twice in the batch")
    return batch_id, records


class AdminAPI:
    """
    The Klein application mounted at C{/admin}.
    """

    _app = Klein()

    def __init__(self, snapshots: ISnapshotSource) -> None:
        """
        @param snapshots: where partitions are dumped and restored records
            written.
        """
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
        batch_id, records = _restored_records(request.content.read())
        live = [record for record in records if record.ttl is None or record.ttl > 0]

        def answer(written: int) -> bytes:
            request.setHeader(b"Content-Type", JSON_TYPE)
            return to_json({"written": written, "skipped": len(records) - len(live)})

        return self._snapshots.restore(live, batch_id).addCallback(answer)

    @_app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return render_failure(request, failure)


def admin_resource(snapshots: ISnapshotSource) -> IResource:
    """
    The C{/admin} resource; mount it as the C{admin} child of the site's
    root.
    """
    return AdminAPI(snapshots).resource()
