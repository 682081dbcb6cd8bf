"""report.md's first paragraph: what ran and what came out, in plain words and human units,
and the formatters its tables share (see ``report_markdown``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_WORDS = {
    "mean": "plain average (FedAvg)",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
    "bulyan": "Bulyan",
    "dnc": "Divide-and-Conquer filter",
    "cosine_two_sided": "two-sided cosine filter",
    "error": "failed",
    "norm_ratio": "rejected as too large",
    "aggregation": "not aggregated",
}
"""Plain words for the rule names and failure kinds that ``replace("_", " ")`` does not give."""

_SERVER_OPTIMIZERS = {"fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi"}


def _words(name: str) -> str:
    return _WORDS.get(name, name.replace("_", " "))


def _pct(value: Any) -> str:
    """A share as a percentage: ``71.2%``."""
    return "–" if value is None else f"{100 * value:.1f}%"


def _mb(num_bytes: Any) -> str:
    """Bytes in megabytes: ``5.31 MB``."""
    mb = (num_bytes or 0) / 1e6
    return f"{mb:.2f} MB" if mb < 10 else f"{mb:.0f} MB"


def _duration(seconds: Any) -> str:
    """``42 s``, ``3 min 12 s``, ``1 h 05 min``."""
    if seconds is None:
        return "–"
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _num(value: Any) -> str:
    """Any other JSON value in words (never a Python repr)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_num(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list):
        return ", ".join(_num(v) for v in value) or "none"
    return str(value)


def _cohort_words(cfg: dict[str, Any], deployed: bool = False) -> str:
    c, fed = cfg.get("cohort", {}), cfg.get("federation", {})
    if deployed:
        who = f"{c.get('num_clients')} expected devices, each training on its own data,"
    elif c.get("kind") == "synthetic":
        who = f"{c.get('num_clients')} simulated users with known preferences (synthetic cohort"
        who += f", Dirichlet alpha {c['alpha']:g}" if "alpha" in c else ""
        if c.get("responses") == "policy":
            who += f"; each pair two of the base policy's own answers, {c.get('policy_samples')} per prompt"
        who += ")"
    else:
        split = "split evenly at random" if c.get("partition") == "iid" else "split unevenly by topic"
        who = f"{c.get('num_clients')} simulated users holding the pairs of {c.get('data')} ({split})"
    run = (
        f"{who} trained {_trained_words(cfg)} together over {fed.get('rounds')} rounds, "
        f"{fed.get('clients_per_round')} users per round"
    )
    if fed.get("personal"):
        run += ", each also training a personal adapter that never leaves the device"
    return run + "."


_TASK_WORDS = {
    "dpo": "with DPO on their preference pairs",
    "kto": "with KTO on thumbs up / down ratings (each preference pair read as its chosen answer "
    "rated up and its rejected one rated down)",
}


def _task(cfg: dict[str, Any]) -> str:
    return str(cfg.get("federation", {}).get("task", "reward"))


def _trained_words(cfg: dict[str, Any]) -> str:
    """What the federation trained: the reward model, or the policy's LoRA and how."""
    task = _task(cfg)
    if task not in _TASK_WORDS:
        return "one reward model"
    policy = cfg.get("policy", {})
    return (
        f"the LoRA (rank {policy.get('lora_r')}) of one policy, {policy.get('model')}, "
        f"{_TASK_WORDS[task]}, beta {policy.get('beta', 0.1):g}"
        + (
            f" (RPO: plus {policy['rpo_alpha']:g} x the chosen answer's NLL),"
            if policy.get("rpo_alpha")
            else ","
        )
    )


def _accuracy_words(cfg: dict[str, Any]) -> str:
    if _task(cfg) == "reward":
        return (
            "Accuracy is pairwise: how often a model scores the response the user preferred above the "
            "other one (50% is a coin flip)."
        )
    return (
        "Accuracy is the policy's implicit-reward accuracy on preference pairs: how often "
        "beta * log(policy / reference) is higher for the preferred response than for the other "
        "one, the reference being the base model (50% is a coin flip; the untrained policy, equal "
        "to its reference, scores exactly 50%)."
    )


def _privacy_words(cfg: dict[str, Any], final: dict[str, Any]) -> str:
    eps, delta = final.get("epsilon"), final.get("delta")
    spent = f"epsilon {eps:.2f} at delta {delta:g}" if eps is not None and delta else "epsilon not measured"
    user, rec, sec = cfg.get("user_dp", {}), cfg.get("privacy", {}), cfg.get("secagg", {})
    if sec.get("enabled") and sec.get("dp_noise_multiplier"):
        return (
            "Privacy: distributed user-level differential privacy over secure groups (each device "
            f"clips its update to norm {sec['clip_norm']:g} and adds its share of noise multiplier "
            f"{sec['dp_noise_multiplier']:g} before masking; the server sees only noised group sums); "
            f"{spent} per user over the run."
        )
    if user.get("enabled"):
        return (
            f"Privacy: user-level differential privacy (each update clipped to norm {user['clip_norm']:g}, "
            f"noise multiplier {user['noise_multiplier']:g}); {spent} per user over the run."
        )
    if rec.get("enabled"):
        aim = (
            f"target epsilon {rec['target_epsilon']:g}"
            if rec.get("target_epsilon") is not None
            else f"noise multiplier {rec.get('noise_multiplier')}"
        )
        if sec.get("enabled") and sec.get("record_dp"):
            return (
                "Privacy: record-level distributed differential privacy (DP-FedSGD over secure groups: "
                "each round a device sends its records' clipped gradient sum plus its share of the "
                f"noise, before masking; {aim}); {spent}, the most any device spent."
            )
        return (
            f"Privacy: differential privacy on each device's records (DP-SGD, {aim}); "
            f"{spent}, the most any device spent."
        )
    return "Privacy: no differential privacy."


def _warm_start_words(report: dict[str, Any]) -> str:
    """The public warm start in one sentence, and that it is not private ('' without one)."""
    warm = report.get("warm_start")
    if not warm:
        return ""
    files = ", ".join(Path(d).name for d in warm.get("data") or [])
    words = (
        f"Before round 1 the server trained the global model on {warm.get('pairs')} public pairs "
        f"({files}, {warm.get('epochs'):g} epoch(s), {_duration(warm.get('seconds'))}), without "
        "differential privacy: public data, trained by the server"
    )
    if warm.get("accuracy") is not None:
        words += f"; it ranks {_pct(warm['accuracy'])} of {warm.get('held_out_pairs')} held-out public pairs"
    start = (report.get("initial") or {}).get("global_accuracy")
    if start is not None:
        words += f" and {_pct(start)} of the server's held-out pairs before round 1"
    return words + "."


def _defence_words(cfg: dict[str, Any]) -> str:
    r, sec, att = cfg.get("robust", {}), cfg.get("secagg", {}), cfg.get("attack", {})
    words = f"Updates combined by {_words(str(r.get('rule', 'mean')))}"
    optimizer = cfg.get("federation", {}).get("server_optimizer", "fedavg")
    if optimizer != "fedavg":
        words += f" and applied with the {_SERVER_OPTIMIZERS.get(optimizer, optimizer)} server optimiser"
    if r.get("num_malicious"):
        words += f", built to tolerate {r['num_malicious']} attacker(s) per round"
    if sec.get("enabled"):
        words += (
            f"; secure aggregation on (the server sees only sums of {sec.get('min_group_size')}+ devices)."
        )
    else:
        words += "; secure aggregation off (the server sees each update)."
    if att.get("name", "none") != "none" and att.get("fraction", 0) > 0:
        words += f" {att['fraction']:.0%} of the users are simulated attackers ({att['name']})."
    return words


def _outcome_words(report: dict[str, Any]) -> str:
    final, rounds = report["final"], report["rounds"]
    words = f"After round {rounds[-1]['round'] if rounds else 0} the global model ranks "
    if final.get("global_accuracy") is None and final.get("client_global_accuracy") is not None:
        words += f"{_pct(final['client_global_accuracy'])} of the devices' own test pairs correctly"
    else:
        words += f"{_pct(final.get('global_accuracy'))} of the server's held-out pairs correctly"
    if final.get("personal_accuracy") is not None:
        words += (
            f"; on the users' own test pairs the global model scores "
            f"{_pct(final.get('client_global_accuracy'))} and the personalised models "
            f"{_pct(final.get('personal_accuracy'))}"
        )
    if final.get("bayes_accuracy") is not None:
        words += f", against {_pct(final['bayes_accuracy'])} for the best possible per-user predictor"
    words += "."
    if final.get("attack_success_rate") is not None:
        words += f" The attack succeeded on {_pct(final['attack_success_rate'])} of its trigger pairs."
    return (
        f"{words} The run took {_duration(final.get('seconds'))} and moved "
        f"{_mb(final.get('bytes_up'))} from the devices and {_mb(final.get('bytes_down'))} to them."
        + _time_words(final.get("timing"))
    )


def _time_words(timing: dict[str, float] | None) -> str:
    """Where the time went, in one sentence (nothing for a resumed run)."""
    if not timing:
        return ""
    compute = timing.get("client_compute")
    device_time = f" (the devices' own compute: {_duration(compute)} summed over devices)" if compute else ""
    return (
        f" Rounds took {_duration(timing['rounds'])}: the devices' stage {_duration(timing['train_stage'])}"
        f"{device_time}, aggregation {_duration(timing['aggregation'])}, server evaluation "
        f"{_duration(timing['evaluation'])}; start-up and the final check "
        f"{_duration(timing['outside_rounds'])}."
    )


def _summary(report: dict[str, Any]) -> str:
    """The first paragraph: what ran and what came out."""
    cfg = report.get("config", {})
    parts = (
        _cohort_words(cfg, deployed=_deployed(report)),
        _privacy_words(cfg, report["final"]),
        _warm_start_words(report),
        _defence_words(cfg),
    )
    return " ".join(p for p in (*parts, _outcome_words(report)) if p)


def _deployed(report: dict[str, Any]) -> bool:
    """A deployment (``prepare-cohort=false``): no simulated cohort behind the report."""
    return not report.get("cohort")
