"""Pushing: the payload is pushed with Veza's documented calls, the saved JSON is byte for byte oaaclient's
get_payload(), and Veza decodes the same payload oaaclient's push_application sends."""

from __future__ import annotations

import base64
import gzip
import json
import math

import pytest
from conftest import NO_ROLE_READS, VEZA_SECRET
from oaaclient.client import OAAClient

import veza_openai as vo


def mapped_application(openai_fake) -> vo.CustomApplication:
    """The fake organization read and mapped in this process, as a run without per-user role reads maps it."""
    config = vo.Config(org_id=openai_fake.org.org_id, openai_api_key=openai_fake.admin_key,
                       openai_base_url=openai_fake.base_url, role_assignments="none")
    http = vo.Http(config.openai_base_url, config.openai_api_key, timeout=30, max_bytes=2 ** 25)
    snapshot = vo.ReadPlan(config, vo.Scheduler(http, config, vo.Clock(0.001), vo.FAMILY_LIST)).read()
    return vo.build_application(snapshot).application


def received_json(veza) -> bytes:
    """The payload JSON as Veza got it, from the raw request bodies of the push (whole or in parts)."""
    bodies = [json.loads(raw) for method, path, _, raw in veza.bodies if path.endswith((":push", ":parts"))]
    if len(bodies) == 1:
        return gzip.decompress(base64.b64decode(bodies[0]["json_data"]))
    return b"".join(base64.b64decode(body["data"]) for body in bodies if body["operation"] == "upload")


@pytest.mark.parametrize("multipart", [False, True], ids=["whole", "in parts"])
def test_saved_and_pushed_json_are_byte_for_byte_oaaclients(run_connector, veza, openai_fake, tmp_path, monkeypatch,
                                                           multipart):
    if multipart:  # the threshold and part size are 50 MB; the demo payload is about 60 KB
        monkeypatch.setattr(vo, "PUSH_IN_PARTS_OVER", 25_000)
    veza.keep_bodies = True
    result = run_connector("--save-json", str(tmp_path / "out.json"), *NO_ROLE_READS)
    assert result.returncode == 0, result.output
    expected = json.dumps(mapped_application(openai_fake).get_payload(), separators=(",", ":")).encode("ascii")
    assert (tmp_path / "out.json").read_bytes() == expected
    assert received_json(veza) == expected
    parts = [raw for _, path, _, raw in veza.bodies if path.endswith(":parts")]
    assert len(parts) == (2 + math.ceil(len(expected) / 25_000) if multipart else 0)  # start, uploads, complete
    assert len(parts) != 3  # more than one upload
    assert {kind for _, path, kind, _ in veza.bodies if path.endswith((":push", ":parts"))} == {"application/json"}


def test_veza_decodes_the_same_payload_from_the_connector_as_from_oaaclients_push_application(
        run_connector, veza, openai_fake, ca, monkeypatch):
    """The push is Veza's documented request made with requests; oaaclient's own push_application of the same
    application must give Veza the same payload and the same request fields."""
    veza.keep_bodies = True
    assert run_connector(*NO_ROLE_READS).returncode == 0
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca[1])
    monkeypatch.setenv("OAA_API_RETRIES", "0")
    client = OAAClient(url=veza.url, api_key=VEZA_SECRET)
    client.push_application(vo.PROVIDER_NAME, "oaaclient's push", mapped_application(openai_fake))
    ours, oaaclients = veza.payloads
    assert ours == oaaclients
    [body, reference] = [json.loads(raw) for _, path, _, raw in veza.bodies if path.endswith(":push")]
    assert sorted(body) == sorted(reference) and body["compression_type"] == reference["compression_type"] == "GZIP"

