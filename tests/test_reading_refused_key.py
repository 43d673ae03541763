"""A key OpenAI refuses is named by the variable it came from, so the operator fixes the right one."""

from __future__ import annotations

import re

import pytest
from conftest import NO_ROLE_READS

WRONG_KEY = "sk-admin-WRONG-key-of-another-org-1234"


@pytest.mark.parametrize("source", ["OPENAI_ADMIN_KEY", "OPENAI_API_KEY_FILE", "OPENAI_ADMIN_KEY_FILE"])
def test_a_refused_key_names_the_variable_it_came_from(run_connector, veza, tmp_path, source):
    if source.endswith("_FILE"):
        (tmp_path / "key").write_text(WRONG_KEY + "\n")
        env = {source: str(tmp_path / "key")}
    else:
        env = {source: WRONG_KEY}
    result = run_connector(*NO_ROLE_READS, env=env, drop=("OPENAI_API_KEY",))
    assert result.returncode == 1, result.output
    # whichever read is answered first: reads go out together
    assert re.search(rf"OpenAI refused the key from {source} \(HTTP 401 on /\S+\): it must be an Admin API "
                     r"key \(sk-admin-\.\.\.\) of organization org-demo0001", result.stderr), result.stderr
    assert "OPENAI_API_KEY must" not in result.stderr
    assert WRONG_KEY not in result.output and veza.pushes == []
