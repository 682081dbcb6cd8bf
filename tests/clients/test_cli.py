"""fedrlhf-client: recording, listing, exporting, forgetting, budget, personal training, join."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clients import app
from clients.cli import main
from fedrlhf.feedback import Preference, read_feedback
from fedrlhf.privacy.ledger import PrivacyLedger

EMAIL = "alice.smith@example.com"


@pytest.fixture()
def device(tmp_path: Path) -> Path:
    return tmp_path / "device"


def run(capsys: pytest.CaptureFixture[str], device: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--device", str(device), *args])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str], device: Path) -> list[dict]:
    code, out, _ = run(capsys, device, "list", "--json")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture()
def ready(capsys: pytest.CaptureFixture[str], device: Path) -> Path:
    assert run(capsys, device, "init")[0] == 0
    return device


def record_some(capsys: pytest.CaptureFixture[str], device: Path) -> None:
    for args in (
        ["up", "--prompt", "hi", "--response", "Hello! How can I help?", "--reason", "friendly"],
        ["down", "--prompt", "hi", "--response", "Go away.", "--reason", "rude"],
        ["ab", "--prompt", "2+2?", "--a", "It is 5.", "--b", "It is 4.", "--choice", "b"],
        ["correct", "--prompt", "capital of France?", "--response", "Lyon", "--corrected", "Paris"],
    ):
        assert run(capsys, device, "record", *args)[0] == 0


def test_record_every_kind_and_list(capsys, ready) -> None:
    record_some(capsys, ready)
    items = listed(capsys, ready)
    assert [i["kind"] for i in items] == ["rating", "rating", "preference", "correction"]
    assert [i.get("label") for i in items[:2]] == [1, -1]
    assert items[0]["reason"] == "friendly" and items[1]["reason"] == "rude"
    assert (items[2]["chosen"], items[2]["rejected"]) == ("It is 4.", "It is 5.")
    assert (items[3]["response"], items[3]["corrected"]) == ("Lyon", "Paris")
    code, out, _ = run(capsys, ready, "list")
    assert code == 0 and "thumbs up" in out and "chose 'It is 4.' over 'It is 5.'" in out


def test_export_is_scrubbed_and_the_store_encrypted(capsys, ready, tmp_path) -> None:
    secret = "My secret answer text 7f3a"
    assert run(capsys, ready, "record", "up", "--response", secret, "--reason", f"mail me at {EMAIL}")[0] == 0
    code, out, _ = run(capsys, ready, "export", str(tmp_path / "out.jsonl"))
    assert code == 0 and "exported 1 records" in out
    line = json.loads((tmp_path / "out.jsonl").read_text())
    assert line["reason"] == "mail me at <EMAIL>" and line["completion"] == secret
    assert EMAIL not in (tmp_path / "out.jsonl").read_text()
    raw = b"".join(p.read_bytes() for p in ready.glob("feedback.db*"))
    assert EMAIL.encode() not in raw and secret.encode() not in raw  # scrubbed, then encrypted
    assert os.stat(tmp_path / "out.jsonl").st_mode & 0o077 == 0


def test_forget_one_since_and_all_also_from_the_training_export(capsys, ready) -> None:
    client = app.ClientDevice.open(ready)
    with client.store() as store:  # an old record, from before --since
        store.add(
            Preference("old", "old good answer", "old bad answer"),
            created_at=datetime.now(UTC) - timedelta(days=10),
        )
    record_some(capsys, ready)
    assert run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--dry-run")[0] == 0
    assert "Go away." in (ready / "train.jsonl").read_text() + (ready / "test.jsonl").read_text()
    code, out, _ = run(capsys, ready, "forget", "3")
    assert code == 0 and "forgot 1 record" in out
    assert [i["id"] for i in listed(capsys, ready)] == [1, 2, 4, 5]
    assert "Go away." not in (ready / "train.jsonl").read_text() + (ready / "test.jsonl").read_text()
    assert run(capsys, ready, "forget", "--since", "1h")[0] == 0
    assert [i["id"] for i in listed(capsys, ready)] == [1]
    code, out, _ = run(capsys, ready, "forget", "--all")
    assert code == 0 and "forgot 1 record" in out and listed(capsys, ready) == []
    assert (ready / "train.jsonl").read_text() == "" and not list((ready / "cache").glob("tokens-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["forget"], "exactly one of"),
        (["forget", "1", "--all"], "exactly one of"),
        (["forget", "42"], "no feedback records with ids [42]"),
    ],
)
def test_bad_forget_is_a_one_line_error(capsys, ready, args, message) -> None:
    code, out, err = run(capsys, ready, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_init_twice_with_other_settings_is_refused(capsys, ready) -> None:
    assert run(capsys, ready, "init")[0] == 0  # same settings: nothing to do
    code, _, err = run(capsys, ready, "init", "--lifetime-epsilon", "2")
    assert code == 2 and "already a client with other settings" in err


def test_default_device_is_one_stable_random_id(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FEDRLHF_DEVICE", raising=False)
    monkeypatch.setenv("FEDRLHF_HOME", str(tmp_path / "home"))
    assert main(["init"]) == 0
    (made,) = (tmp_path / "home").glob("device-*")
    assert len(made.name) == len("device-") + 16
    assert main(["record", "up", "--response", "fine"]) == 0
    assert app.default_device_dir() == made and len(listed(capsys, made)) == 1
    assert app.ClientDevice.init(tmp_path / "home" / "device-other")
    capsys.readouterr()
    assert main(["list"]) == 2 and "choose one with --device" in capsys.readouterr().err


def test_commands_on_a_missing_client_say_to_init(capsys, device) -> None:
    code, _, err = run(capsys, device, "list")
    assert code == 2 and "init" in err and len(err.strip().splitlines()) == 1


def test_passphrase_store(capsys, device, monkeypatch) -> None:
    monkeypatch.setenv("MY_PASS", "correct horse battery staple")
    assert run(capsys, device, "--passphrase-env", "MY_PASS", "init")[0] == 0
    assert not (device / "store.key").exists()
    assert run(capsys, device, "--passphrase-env", "MY_PASS", "record", "up", "--response", "ok")[0] == 0
    code, _, err = run(capsys, device, "list")
    assert code == 2 and "passphrase" in err
    monkeypatch.setenv("MY_PASS", "wrong")
    code, _, err = run(capsys, device, "--passphrase-env", "MY_PASS", "list")
    assert code == 2 and "wrong key or passphrase" in err


def test_budget_shows_spent_and_remaining(capsys, ready) -> None:
    code, out, _ = run(capsys, ready, "budget")
    assert code == 0 and out.strip() == "epsilon spent 0 of 8 (8 left), delta 1e-05, 0 training runs"
    ledger = PrivacyLedger(ready / "privacy_ledger.json", delta=1e-5, lifetime_epsilon=None)
    ledger.record(noise_multiplier=1.0, sample_rate=0.1, steps=100, label="round-1")
    spent = ledger.spent()
    assert 0 < spent < 8
    code, out, _ = run(capsys, ready, "budget", "--json")
    report = json.loads(out)
    assert code == 0 and report["runs"] == 1 and report["lifetime"] == 8.0
    assert report["spent"] == pytest.approx(spent) and report["remaining"] == pytest.approx(8 - spent)
    code, out, _ = run(capsys, ready, "budget")
    assert f"epsilon spent {spent:.3g} of 8 ({8 - spent:.3g} left)" in out and "1 training run" in out


def test_train_personal_updates_the_adapter(capsys, device, tiny_bert) -> None:
    from safetensors.numpy import load_file

    assert run(capsys, device, "init", "--backbone", tiny_bert, "--max-length", "32")[0] == 0
    for i in range(8):
        assert (
            run(
                capsys,
                device,
                "record",
                "ab",
                "--prompt",
                f"question {i}",
                "--a",
                f"Happy to help {i}.",
                "--b",
                f"No. {i}",
                "--choice",
                "a",
            )[0]
            == 0
        )
    args = ("train-personal", "--epochs", "1", "--batch-size", "4", "--lr", "0.01")
    code, out, _ = run(capsys, device, *args)
    assert code == 0 and "personal adapter trained on 6 examples" in out  # 8 minus the 2 held out
    assert len(read_feedback(device / "test.jsonl").records) == 2
    first = load_file(str(device / "personal.safetensors"))
    assert first and all("lora_" in k and ".personal." in k for k in first)
    assert any(abs(v).sum() > 0 for k, v in first.items() if "lora_B" in k)  # B starts at 0
    assert run(capsys, device, *args)[0] == 0
    second = load_file(str(device / "personal.safetensors"))
    assert first.keys() == second.keys() and any((first[k] != second[k]).any() for k in first)


def test_train_personal_without_feedback_is_a_clear_error(capsys, ready) -> None:
    code, _, err = run(capsys, ready, "train-personal")
    assert code == 2 and "no feedback left to train on" in err


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    ca, key = tmp_path / "ca.pem", tmp_path / "node.key"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    return ca, key


def test_join_dry_run_prints_the_supernode_command_and_exports(capsys, ready, tmp_path) -> None:
    record_some(capsys, ready)
    ca, key = _keys(tmp_path)
    code, out, _ = run(
        capsys,
        ready,
        "join",
        "--superlink",
        "fl.example.org:9091",
        "--root-certificates",
        str(ca),
        "--auth-key",
        str(key),
        "--dry-run",
    )
    assert code == 0
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[:2] == ["FLWR_TELEMETRY_ENABLED=0", "HF_HUB_DISABLE_PROGRESS_BARS=1"]
    assert Path(cmd[2]).name == "flower-supernode"
    assert cmd[3:] == [
        "--superlink",
        "fl.example.org:9091",
        "--root-certificates",
        str(ca),
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        f'device-dir="{ready}"',
    ]
    key_value = cmd[-1].replace("=", " = ", 1)  # Flower parses node-config values as TOML
    assert tomllib.loads(key_value) == {"device-dir": str(ready)}
    train, test = (read_feedback(ready / f"{s}.jsonl").records for s in ("train", "test"))
    assert len(train) + len(test) == 4 and len(test) == 1
    assert "exported 3 train and 1 test records" in out
    with app.ClientDevice.open(ready).store() as store:
        assert store.rounds_used(1) == []  # a dry run trains nothing


def test_join_insecure_and_refusals(capsys, ready, tmp_path) -> None:
    record_some(capsys, ready)
    code, out, _ = run(
        capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--port", "9095", "--dry-run"
    )
    assert code == 0
    assert shlex.split(out.splitlines()[-1])[3:-2] == [
        "--superlink",
        "127.0.0.1:9091",
        "--insecure",
        "--port",
        "9095",
    ]
    code, _, err = run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--dry-run")
    assert code == 2 and "--root-certificates" in err
    code, _, err = run(
        capsys, ready, "join", "--superlink", "https://fl.example.org", "--insecure", "--dry-run"
    )
    assert code == 2 and "HOST:PORT" in err
    ca, key = _keys(tmp_path)
    key.chmod(0o644)
    code, _, err = run(
        capsys,
        ready,
        "join",
        "--superlink",
        "h:1",
        "--root-certificates",
        str(ca),
        "--auth-key",
        str(key),
        "--dry-run",
    )
    assert code == 2 and "chmod 600" in err


def test_join_refuses_when_the_budget_is_spent(capsys, ready) -> None:
    record_some(capsys, ready)
    ledger = PrivacyLedger(ready / "privacy_ledger.json", delta=1e-5, lifetime_epsilon=None)
    ledger.record(noise_multiplier=0.0, sample_rate=0.1, steps=10, label="no-noise")  # epsilon = inf
    code, _, err = run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--dry-run")
    assert code == 2 and "spent its privacy budget" in err
    code, out, _ = run(capsys, ready, "budget")
    assert "unbounded" in out


def test_queue_command(capsys, ready) -> None:
    assert run(capsys, ready, "queue", "--prompt", "p", "--response", "one")[0] == 0
    assert run(capsys, ready, "queue", "--prompt", "q", "--response", "A", "--response", "B")[0] == 0
    code, out, _ = run(capsys, ready, "queue")
    assert code == 0 and "thumbs" in out.splitlines()[0] and "A/B" in out.splitlines()[1]
    code, _, err = run(capsys, ready, "queue", "--response", "same", "--response", "same")
    assert code == 2 and "identical" in err


def flip_row(device: Path, row_id: int) -> None:
    """Flip one ciphertext byte of a stored record, as a failing disk or a tamperer would."""
    with sqlite3.connect(device / "feedback.db") as conn:
        (blob,) = conn.execute("SELECT ciphertext FROM feedback WHERE id = ?", (row_id,)).fetchone()
        conn.execute(
            "UPDATE feedback SET ciphertext = ? WHERE id = ?", (bytes([blob[0] ^ 1]) + blob[1:], row_id)
        )


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_corrupt_row_is_skipped_with_one_warning_and_forget_removes_it(capsys, ready, tmp_path) -> None:
    record_some(capsys, ready)
    flip_row(ready, 2)
    code, out, err = run(capsys, ready, "list", "--json")
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [1, 3, 4]
    warning = one_line(err)
    assert "warning: skipped 1 record that failed authentication" in warning and "forget 2" in warning
    code, out, err = run(capsys, ready, "export", str(tmp_path / "out.jsonl"))
    assert code == 0 and "exported 3 records" in out and "forget 2" in one_line(err)
    code, out, err = run(capsys, ready, "join", "--superlink", "127.0.0.1:9091", "--insecure", "--dry-run")
    assert code == 0 and "exported 2 train and 1 test records" in out and "ids 2" in one_line(err)
    code, out, err = run(capsys, ready, "forget", "2")
    assert code == 0 and "forgot 1 record" in out and err == ""
    code, out, err = run(capsys, ready, "list")
    assert code == 0 and err == "" and len(out.splitlines()) == 3


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_vanished_store_is_refused_until_init_force(capsys, ready, damage) -> None:
    assert run(capsys, ready, "record", "up", "--response", "fine")[0] == 0
    db = ready / "feedback.db"
    if damage == "delete":
        db.unlink()
    else:
        db.write_bytes(b"")
    for args in (["list"], ["record", "up", "--response", "again"], ["queue"], ["init"]):
        code, _, err = run(capsys, ready, *args)
        line = one_line(err)
        assert code == 2 and "feedback.db has vanished or is empty" in line and "init --force" in line, args
    assert not db.exists() or db.stat().st_size == 0  # nothing was re-created behind the user's back
    assert run(capsys, ready, "init", "--force")[0] == 0
    code, out, err = run(capsys, ready, "list")
    assert code == 0 and "no feedback recorded" in out
    assert run(capsys, ready, "init", "--force")[0] == 0  # an intact store is kept as it is
    assert run(capsys, ready, "record", "up", "--response", "kept")[0] == 0
    assert run(capsys, ready, "init", "--force")[0] == 0 and len(listed(capsys, ready)) == 1


def test_a_store_that_is_a_directory_or_has_bad_metadata_is_one_error(capsys, ready) -> None:
    db = ready / "feedback.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 'x' WHERE key = 'schema_version'")
    code, _, err = run(capsys, ready, "list")
    assert code == 2 and str(db) in one_line(err) and "damaged store metadata" in err
    db.unlink()
    db.mkdir()
    code, _, err = run(capsys, ready, "list")
    assert code == 2 and f"{db} is a directory" in one_line(err)


def test_bytes_that_are_not_utf8_are_one_error_naming_the_field(capsys, ready) -> None:
    stray = b"caf\xff".decode("utf-8", "surrogateescape")  # how Python passes a non-UTF-8 argv byte
    code, _, err = run(capsys, ready, "record", "up", "--response", "ok", "--reason", stray)
    assert code == 2 and "field 'reason'" in one_line(err)
    code, _, err = run(capsys, ready, "queue", "--prompt", stray, "--response", "ok")
    assert code == 2 and "field 'prompt'" in one_line(err)
    assert listed(capsys, ready) == [] and run(capsys, ready, "queue")[1] == ""


def test_the_queue_keeps_no_plain_text(capsys, ready) -> None:
    card = "4111 1111 1111 1111"
    code, out, _ = run(capsys, ready, "queue", "--prompt", f"card {card}, mail {EMAIL}", "--response", "ok")
    assert code == 0 and out.startswith("queued ")
    assert not (ready / "queue.json").exists()
    raw = b"".join(p.read_bytes() for p in ready.rglob("*") if p.is_file())
    assert card.encode() not in raw and EMAIL.encode() not in raw
    code, out, _ = run(capsys, ready, "queue")
    assert code == 0 and "<CREDIT_CARD>" in out and "<EMAIL>" in out


@pytest.mark.parametrize("text", ["[1", "[1]", '{"x": 1}', '[{"id": 1, "prompt": "p", "responses": []}]'])
def test_a_malformed_queue_json_is_one_error(capsys, ready, text) -> None:
    (ready / "queue.json").write_text(text)
    code, _, err = run(capsys, ready, "queue")
    assert code == 2 and one_line(err).startswith(f"fedrlhf-client queue: error: {ready / 'queue.json'}")


def test_queue_drop_removes_an_item(capsys, ready) -> None:
    code, out, _ = run(capsys, ready, "queue", "--prompt", "p", "--response", "one")
    item_id = out.split()[-1]
    assert run(capsys, ready, "queue", "--drop", item_id)[1] == f"dropped {item_id}\n"
    assert run(capsys, ready, "queue")[1] == ""
    code, _, err = run(capsys, ready, "queue", "--drop", item_id)
    assert code == 2 and "no waiting item" in one_line(err)


def test_list_into_a_closed_pipe_is_quiet(capsys, ready) -> None:
    """``fedrlhf-client list | head``: the reader leaves early; no broken-pipe error is printed."""
    record_some(capsys, ready)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "--device", str(ready), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the child writes anything: its first write finds no reader
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""


def test_module_entry_point_runs(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "--device", str(tmp_path / "d"), "init"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0 and "client ready" in done.stdout
