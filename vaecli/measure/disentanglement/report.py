"""`vae evaluate --disentanglement`: the command around :mod:`.evaluate`, and the table it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaecli.runfolder import lock
from vaecli.runfolder.checkpoint import load_model

# (metric, key in its result, what the row says) in the order the table prints them
ROWS = (
    ("mig", "mig", "MIG (20-bin histograms of the means, as disentanglement_lib)"),
    ("chen_mig", "chen_mig", "MIG as Chen et al. 2018 estimate it (from q(z|x); shape left out)"),
    ("dci", "disentanglement", "DCI disentanglement"),
    ("dci", "completeness", "DCI completeness"),
    ("dci", "informativeness", "DCI informativeness (test accuracy)"),
    ("sap", "sap", "SAP"),
    ("modularity_explicitness", "modularity", "modularity"),
    ("modularity_explicitness", "explicitness", "explicitness (test ROC AUC)"),
    ("factor_vae_score", "factor_vae_score", "FactorVAE score (eval accuracy)"),
    ("beta_vae_score", "beta_vae_score", "beta-VAE score (eval accuracy)"),
)
SETTINGS = ("points", "test_points", "bins", "batch", "train_votes", "eval_votes", "train_points", "eval_points")


def settings_of(result: dict[str, Any]) -> str:
    """A metric's sample sizes, bins and learner in one short line (disentanglement.json has them all)."""
    parts = [f"{key}={result[key]}" for key in SETTINGS if key in result]
    if "learner" in result:
        parts.append(str(result["learner"]).split(" ")[0])
    stages = result.get("learner_params", {}).get("n_estimators")
    if stages is not None:
        parts.append(f"{stages} stages")
    return ", ".join(parts)


def disentanglement_command(request: Any) -> list[Path]:
    """Load the checkpoint, evaluate under the run folder's lock, print the table; the files written."""
    from rich.console import Console

    from vaecli.measure.disentanglement.evaluate import evaluate_disentanglement

    errors = Console(stderr=True)
    loaded = load_model(request.checkpoint, request.device)
    with lock.Locked(loaded.run_dir):
        say = lambda line: errors.print(f"[dim]{line}[/dim]")  # noqa: E731
        options = (request.data_root, request.seed, request.fast_dci)
        run = (loaded.model, loaded.config, loaded.run_dir, str(loaded.file))
        path, result = evaluate_disentanglement(*run, options, say)
    print_table(Console(), result)
    return [path]


def print_table(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    from vaecli.measure.disentanglement.metrics import is_fast_dci  # sklearn: loaded only when printing

    table = Table(title=f"{result['data']}: {result['images_encoded']} images, {result['codes']}")
    for column in ("metric", "value", "settings", "s"):
        table.add_column(column, justify="right" if column in ("value", "s") else "left")
    for metric, key, words in ROWS:
        found = result["metrics"].get(metric, {})
        if key in found:
            words = (
                words.replace("DCI", "DCI (fast)")
                if metric == "dci" and is_fast_dci(str(found.get("learner", "")))
                else words
            )
            table.add_row(words, f"{found[key]:.3f}", settings_of(found), f"{found.get('seconds', 0):.1f}")
    console.print(table)
