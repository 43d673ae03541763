"""Pushing: the payload is built entity by entity and pushed without oaaclient's copies, yet the saved JSON and
every request Veza gets are byte for byte what oaaclient's get_payload(), datasource_push and
datasource_push_parts make."""

from __future__ import annotations

import base64
import gzip
import json
import math
import random

import pytest
from conftest import NO_ROLE_READS, VEZA_SECRET
from oaaclient.client import OAAClient

import veza_openai as vo


def reference_json(openai_fake, **settings) -> bytes:
    """What oaaclient pushes for the fake's organization: json.dumps(get_payload()) of a fresh read."""
    config = vo.Config(org_id=openai_fake.org.org_id, openai_api_key=openai_fake.admin_key,
                       openai_base_url=openai_fake.base_url, time_scale=0.0, role_assignments="none", **settings)
    snapshot = vo.ReadPlan(config, vo.Scheduler(vo.OpenAIAdminClient(config), config, vo.FAMILY_LIST)).read()
    payload = vo.build_application(snapshot).application.get_payload()
    return json.dumps(payload, separators=(",", ":")).encode("ascii")


def received_json(veza) -> bytes:
    """The payload JSON as Veza got it, from the raw request bodies of the push (whole or in parts)."""
    bodies = [json.loads(raw) for method, path, _, raw in veza.bodies if path.endswith((":push", ":parts"))]
    if len(bodies) == 1:
        return gzip.decompress(base64.b64decode(bodies[0]["json_data"]))
    return b"".join(base64.b64decode(body["data"]) for body in bodies if body["operation"] == "upload")


@pytest.mark.parametrize("multipart", [False, True], ids=["whole", "in parts"])
def test_saved_and_pushed_json_are_byte_for_byte_oaaclients(run_connector, veza, openai_fake, tmp_path, monkeypatch,
                                                           multipart):
    if multipart:  # oaaclient's threshold and part size are 50 MB; the demo payload is about 60 KB
        monkeypatch.setattr(OAAClient, "MULTIPART_THRESHOLD_SIZE", 10_000)
        monkeypatch.setattr(OAAClient, "DEFAULT_PART_SIZE", 25_000)
    veza.keep_bodies = True
    result = run_connector("--save_json", str(tmp_path / "out.json"), *NO_ROLE_READS)
    assert result.returncode == 0, result.output
    expected = reference_json(openai_fake)
    assert (tmp_path / "out.json").read_bytes() == expected
    assert received_json(veza) == expected
    parts = [raw for _, path, _, raw in veza.bodies if path.endswith(":parts")]
    assert len(parts) == (2 + math.ceil(len(expected) / 25_000) if multipart else 0)  # start, uploads, complete
    assert len(parts) != 3  # more than one upload


def pushed_bodies(veza, push) -> list[tuple[str, str | None, bytes]]:
    """(path, Content-Type, body) of every push request `push` makes to a fresh data source (its id: <source>)."""
    provider, source = veza.precreate(vo.PROVIDER_NAME, f"source-{random.random()}")
    before = len(veza.bodies)
    push(provider["id"], source["id"])
    return [(path.replace(source["id"], "<source>"), kind, raw.replace(source["id"].encode(), b"<source>"))
            for _, path, kind, raw in veza.bodies[before:]]


def without_gzip_time(body: bytes) -> tuple[dict, bytes]:
    """A :push body with the gzip header's modification time (bytes 4-7, the time of compression) zeroed."""
    fields = json.loads(body)
    compressed = bytearray(base64.b64decode(fields.pop("json_data")))
    compressed[4:8] = bytes(4)
    return fields, bytes(compressed)


@pytest.mark.parametrize("multipart", [False, True], ids=["whole", "in parts"])
def test_each_push_request_is_the_one_oaaclient_sends(veza, ca, openai_fake, monkeypatch, multipart):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca[1])
    config = vo.Config(org_id=openai_fake.org.org_id, openai_api_key=openai_fake.admin_key,
                       openai_base_url=openai_fake.base_url, veza_url=veza.url, veza_api_key=VEZA_SECRET,
                       time_scale=0.0, role_assignments="none")
    client = vo.connect_veza(config)
    monkeypatch.setattr(vo, "_BASE64_STEP", 3 * 1_001)  # the JSON gzipped, each part encoded, in several blocks
    if multipart:
        client.MULTIPART_THRESHOLD_SIZE, client.DEFAULT_PART_SIZE = 10_000, 20_001  # not a multiple of 3
    snapshot = vo.ReadPlan(config, vo.Scheduler(vo.OpenAIAdminClient(config), config, vo.FAMILY_LIST)).read()
    application = vo.build_application(snapshot).application
    text = json.dumps(application.get_payload(), separators=(",", ":"))
    veza.keep_bodies = True
    oaaclients = pushed_bodies(veza, lambda provider, source: (
        client.datasource_push_parts if multipart else client.datasource_push)(provider, source, text))
    streamed = vo.serialize_application(application)
    ours = pushed_bodies(veza, lambda provider, source: (
        vo._push_in_parts if multipart else vo._push_whole)(client, provider, source, streamed))

    assert bytes(streamed) == text.encode("ascii")
    assert [(path, kind) for path, kind, _ in ours] == [(path, kind) for path, kind, _ in oaaclients]
    assert {kind for _, kind, _ in ours} == {"application/json"}
    if multipart:
        upload_ids = [json.loads(bodies[1][2])["upload_id"] for bodies in (ours, oaaclients)]  # [0]: start
        assert len(ours) == 2 + math.ceil(len(text) / 20_001) > 3  # start, several uploads, complete
        assert [raw for _, _, raw in ours] == [raw.replace(*[i.encode() for i in reversed(upload_ids)])
                                               for _, _, raw in oaaclients]
    else:
        [(_, _, body)], [(_, _, reference)] = ours, oaaclients
        assert without_gzip_time(body) == without_gzip_time(reference)
        # the JSON around the base64 is requests' json.dumps: key order, separators
        assert body.split(b'"json_data": "')[0] == reference.split(b'"json_data": "')[0]
        assert body.rsplit(b'", "compression_type"')[1] == reference.rsplit(b'", "compression_type"')[1]


def test_payload_pieces_slice_as_the_whole_bytes_would():
    rng = random.Random(21)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 2_000))
        payload, offset = vo.PayloadJSON(), 0
        while offset < len(data):
            size = rng.choice([0, 1, 2, 100, 476, 477, 478, 1_500])
            payload.write(data[offset:offset + size])
            offset += size
        payload.close()
        assert bytes(payload) == data and len(payload) == len(data)
        assert all(len(piece) == vo.PayloadJSON.PIECE_BYTES for piece in payload.pieces[:-1])
        for _ in range(10):
            start, end = rng.randrange(0, len(data) + 3), rng.randrange(0, len(data) + 600)
            assert payload.slice(start, end) == data[start:end]
