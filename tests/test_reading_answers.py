"""Reading: what the reader keeps of each answer."""

from __future__ import annotations

import json

import veza_openai as vo


def test_records_share_equal_strings_and_are_the_dicts_json_loads_makes():
    shared = vo.SharedStrings()
    pages = ['{"object": "list", "data": [{"id": "user-1", "role": "owner", "role": "reader", "n": 1.5, '
             '"scopes": ["api.model.request", 3, null], "owner": {"type": "user", "user": {"id": "user-1"}}}]}',
             '{"data": [{"id": "user-1", "type": "user", "e": [], "f": {}, "g": true, "h": "\\u00e9"}]}']
    records = [json.loads(page, object_pairs_hook=shared) for page in pages]
    assert records == [json.loads(page) for page in pages]
    assert [list(record["data"][0]) for record in records] == [list(json.loads(page)["data"][0]) for page in pages]
    first, second = records[0]["data"][0], records[1]["data"][0]
    assert first["role"] == "reader"  # a repeated key keeps its last value, as json.loads does
    assert first["id"] is second["id"] is first["owner"]["user"]["id"]  # one str across pages and nesting
    assert first["owner"]["type"] is second["type"]
    assert [key for key in first if key == "id"][0] is [key for key in second if key == "id"][0]
