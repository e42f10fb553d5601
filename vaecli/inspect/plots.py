"""Every plotnine figure: a run's loss plot, ``vae embed``'s scatter and a sweep's comparisons."""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # torch is for the callers' tensors: `vae sweep --report` never imports it
    import torch

# matplotlib's tab10: ten hues that stay apart, one per digit
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


TITLE_WIDTH = 56  # characters a line of loss.png's title holds at its size; longer titles wrap


def loss_plot(metrics: pd.DataFrame, path: Path, title: str = "") -> Path:
    """The seed's figure: loss terms against step on log-log axes, train and test."""
    from plotnine import aes, geom_line, ggplot, labs, scale_x_log10, scale_y_log10, theme_bw

    long = metrics.melt(
        id_vars=["step", "split"],
        value_vars=["loss", "reconstruction", "kl"],
        var_name="term",
        value_name="value",
    )
    long = long[pd.to_numeric(long["value"], errors="coerce") > 0]
    plot = (
        ggplot(long, aes("step", "value", color="term", linetype="split"))
        + geom_line()
        + scale_x_log10()
        + scale_y_log10()
        + labs(x="step", y="per-dimension mean (seed units)", title=textwrap.fill(title, TITLE_WIDTH))
        + theme_bw()
    )
    save_plot(plot, path, width=6, height=4)
    return path


def save_plot(plot, path: Path, width: float, height: float, dpi: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plotnine warns about saving and dropped rows
        plot.save(path, width=width, height=height, dpi=dpi, verbose=False)


def scatter(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, dims: Sequence[int], title: str, legend: str):
    from plotnine import aes, coord_equal, geom_point, ggplot, guide_legend, guides, labs, scale_color_manual, theme_bw

    classes = sorted({*range(len(TAB10)), *labels.tolist()})  # fixed colours, whichever digits are present
    frame = pd.DataFrame({"x": x.numpy(), "y": y.numpy(), legend: pd.Categorical(labels.numpy(), categories=classes)})
    return (
        ggplot(frame, aes("x", "y", color=legend))
        + geom_point(size=1.0, alpha=0.6, stroke=0)
        + scale_color_manual(values=TAB10 * math.ceil(len(classes) / len(TAB10)))
        + coord_equal()
        + guides(color=guide_legend(override_aes={"size": 3, "alpha": 1}))
        + labs(x=f"z{dims[0]} (posterior mean)", y=f"z{dims[1]} (posterior mean)", title=title)
        + theme_bw()
    )


def axes(table: pd.DataFrame, swept: list[str]) -> tuple[str, str]:
    """(colour/column key, facet/row key): beta and latent_size when swept, else the swept keys."""
    varying = [key for key in swept if key in table and table[key].nunique(dropna=True) > 1]
    colour = "beta" if "beta" in varying else (varying[0] if varying else "beta")
    rest = [key for key in varying if key != colour]
    facet = "latent_size" if "latent_size" in rest else (rest[0] if rest else "latent_size")
    return colour, facet


def factor(frame: pd.DataFrame, key: str) -> pd.Categorical:
    """The key's values as labels, ordered by value (so 2 comes before 10)."""
    values = sorted(frame[key].dropna().unique(), key=sort_key)
    labels = [str(value) for value in values]
    short = [f"{value:.4g}" if isinstance(value, float) else label for value, label in zip(values, labels)]
    if len(set(short)) == len(short):  # 0.00244140625 as 0.002441, so ticks side by side stay apart
        labels = short
    names = dict(zip(map(str, values), labels))
    return pd.Categorical(
        frame[key].map(lambda value: names.get(str(value), str(value))), categories=labels, ordered=True
    )


def keyed(frame: pd.DataFrame, colour: str, facet: str) -> pd.DataFrame:
    """A copy with the two swept keys as ordered labels: ``colour`` and ``series`` (the facet key)."""
    frame = frame.copy()
    frame["colour"] = factor(frame, colour)
    frame["series"] = factor(frame, facet) if facet in frame else ""
    return frame


def sort_key(value):
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def loss_curves(long: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    from plotnine import aes, facet_wrap, geom_line, ggplot, labs, scale_x_log10, scale_y_log10, theme_bw

    frame = long[long.split == "train"].copy()
    frame["colour"] = factor(frame, colour)
    frame = frame[frame["loss"] > 0].copy()
    panels = facet in frame and frame[facet].nunique() > 1
    if panels:  # through a plain column: plotnine reads a facet name as an expression (train.lr is not one)
        frame["panel"] = factor(frame, facet).rename_categories(lambda value: f"{facet}: {value}")
    plot = (
        ggplot(frame, aes("step", "loss", colour="colour", group="member"))
        + geom_line()
        + scale_x_log10()
        + scale_y_log10()
        + labs(colour=colour, y="train loss (seed units)", title="loss curves")
        + theme_bw()
    )
    if panels:
        plot += facet_wrap("~panel")
    save_plot(plot, path, width=8, height=5)
    return path


def nats_note(done: pd.DataFrame) -> str:
    """A title's warning when members' nats are a cross-entropy (grey levels under a Bernoulli decoder)."""
    labels = set(done["nats_are"].dropna()) if "nats_are" in done else set()
    return "\n(nats are a cross-entropy, not a log-likelihood)" if "cross-entropy" in labels else ""


def rate_distortion(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    from plotnine import aes, geom_point, geom_text, ggplot, labs, scale_x_continuous, scale_y_continuous, theme_bw

    frame = keyed(done, colour, facet)
    frame["label"] = [f"{colour}={c}, {facet}={f}" for c, f in zip(frame[colour], frame.get(facet, ""))]
    plot = (
        ggplot(frame, aes("test_kl_nats", "test_recon_nats", colour="colour", shape="series"))
        + geom_point(size=3)
        + geom_text(aes(label="label"), size=6, va="bottom", nudge_y=0.6, show_legend=False)
        + scale_x_continuous(expand=(0.12, 0))
        + scale_y_continuous(expand=(0.08, 0))
        + labs(
            x="rate: KL (nats per image, test)",
            y="distortion: reconstruction (nats per image, test)",
            colour=colour,
            shape=facet,
            title="rate-distortion plane" + nats_note(done),
        )
        + theme_bw()
    )
    save_plot(plot, path, width=8, height=6)
    return path


SEARCHED_VALUES = 8  # more distinct numbers than a hand-written grid: a search, drawn on a numeric axis


def final_against(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    """Final test -ELBO against the colour key (beta), one line per facet key (latent_size)."""
    measures = {"-ELBO (nats per image, test)": "test_neg_elbo_nats"}
    return lines_against(done, path, colour, facet, measures, f"final test -ELBO against {colour}" + nats_note(done))


def bound_and_active_units(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    """The test bound -log p(x) <= -IWAE_k and the active units against beta, one line per latent size."""
    ks = sorted({int(k) for k in done.get("iwae_k", pd.Series(dtype=float)).dropna()})
    k = f"_{ks[0]}" if len(ks) == 1 else "_k"
    measures = {f"-IWAE{k} bound on -log p(x) (nats per image, test)": "test_nll_bound_nats"}
    measures["active units (Cov_x E[z|x] > 0.01)"] = "test_active_units"
    title = f"test bound and active units against {colour}" + nats_note(done)
    return lines_against(done, path, colour, facet, measures, title)


def disentanglement_against(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    """Each disentanglement metric a member ran (its disentanglement.json) against beta, one line per latent size."""
    from vaecli.measure.disentanglement.metrics import FAST_STAGES, is_fast_dci

    learners = set(done["dci_learner"].dropna()) if "dci_learner" in done else set()
    fast = learners and all(is_fast_dci(str(name)) for name in learners)
    dci = f"DCI (fast: {FAST_STAGES} stages)" if fast else "DCI"
    labels = {
        "MIG (20 bins)": "mig",
        "MIG, Chen et al.'s estimate": "chen_mig",
        f"{dci} disentanglement": "dci_disentanglement",
        f"{dci} completeness": "dci_completeness",
        f"{dci} informativeness": "dci_informativeness",
        "SAP": "sap",
        "modularity": "modularity",
        "explicitness": "explicitness",
        "FactorVAE score": "factor_vae_score",
        "beta-VAE score": "beta_vae_score",
    }
    measures = {label: column for label, column in labels.items() if column in done}
    return lines_against(done, path, colour, facet, measures, f"disentanglement metrics against {colour}")


def lines_against(
    done: pd.DataFrame, path: Path, colour: str, facet: str, measures: dict[str, str], title: str
) -> Path:
    """Each measure (label: column) against the colour key, one line per facet key; a panel per measure.

    One tick per value for a grid; a numeric axis (log scale for positive values spanning a decade)
    for the many values of an Optuna search.
    """
    from plotnine import aes, facet_wrap, geom_line, geom_point, ggplot, labs, scale_x_log10, theme_bw

    frame = keyed(done, colour, facet)
    numbers = pd.to_numeric(frame[colour], errors="coerce")
    searched = bool(numbers.notna().all() and numbers.nunique() > SEARCHED_VALUES)
    frame["x"] = numbers if searched else frame["colour"]
    long = pd.concat(
        [frame.assign(measure=label, value=pd.to_numeric(frame[column])) for label, column in measures.items()]
    )
    long["measure"] = pd.Categorical(long["measure"], categories=list(measures), ordered=True)
    y = next(iter(measures)) if len(measures) == 1 else ""
    plot = (
        ggplot(long, aes("x", "value", colour="series", group="series"))
        + geom_line()
        + geom_point(size=2)
        + labs(x=colour, y=y, colour=facet, title=title)
        + theme_bw()
    )
    if searched and numbers.min() > 0 and numbers.max() >= 10 * numbers.min():
        plot += scale_x_log10()
    columns = 1 if len(measures) <= 4 else 2  # ten disentanglement panels in one column would be 29 inches tall
    if len(measures) > 1:
        plot += facet_wrap("~measure", ncol=columns, scales="free_y")
    rows = -(-len(measures) // columns)
    save_plot(plot, path, width=7 if columns == 1 else 11, height=4.5 * (1 + 0.6 * (rows - 1)))
    return path
