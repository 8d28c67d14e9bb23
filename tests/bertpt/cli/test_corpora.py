"""``bertpt corpora``: an upload shows the server's warnings; list and show print the API's JSON with
--json; delete removes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer


def test_upload_shows_the_servers_warnings_and_reads_back_as_json(
    start_api: Callable[..., ApiServer], api_key: str, run_cli: BertptCli, tmp_path: Path
) -> None:
    api = start_api()
    documents = [
        ["The cell divides.", "Its nucleus splits.", "Two cells remain."],
        ["Proteins fold.", "Their shape sets their function.", "Misfolding causes disease."],
        ["Enzymes speed reactions.", "They are not consumed.", "Heat denatures them."],
        ["A lonely one-sentence document."],
    ]
    corpus = tmp_path / "bio.txt"
    corpus.write_text("\n\n".join("\n".join(document) for document in documents) + "\n")

    uploaded = run_cli(
        "corpora", "upload", str(corpus), "--name", "biology", api_url=api.base_url, key=api_key
    )
    assert uploaded.exit_code == 0, uploaded.output
    assert "(biology): 4 documents, 10 sentences" in uploaded.stdout
    assert "warning [one_sentence_documents]:" in uploaded.stdout and "first at line 13" in uploaded.stdout

    listed = run_cli("corpora", "list", "--json", api_url=api.base_url, key=api_key)
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.stdout)["data"]
    assert item["name"] == "biology" and item["documents"] == 4
    assert [warning["code"] for warning in item["warnings"]] == ["one_sentence_documents"]

    shown = run_cli("corpora", "show", item["id"], "--json", api_url=api.base_url, key=api_key)
    assert json.loads(shown.stdout) == item

    table = run_cli("corpora", "list", api_url=api.base_url, key=api_key)
    assert item["id"] in table.stdout and "biology" in table.stdout

    deleted = run_cli("corpora", "delete", item["id"], api_url=api.base_url, key=api_key)
    assert deleted.exit_code == 0 and f"deleted corpus {item['id']}" in deleted.stdout
    gone = run_cli("corpora", "show", item["id"], api_url=api.base_url, key=api_key)
    assert gone.exit_code == 3 and gone.stderr.startswith("error: 404 not_found: ")
