"""PNG charts of a bench run (throughput against clients, latency CDF, lag over time).

matplotlib is optional: it is imported only here, only when --plot is given."""

from __future__ import annotations

from pathlib import Path

import click

HINT = "plotting needs matplotlib: pip install matplotlib"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(HINT) from None


def write_plots(doc: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    inserts = [r for r in doc["results"] if r["scenario"] == "insert"]
    systems = sorted({r["system"] for r in inserts})
    if inserts:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for s in systems:
            rows = sorted((r for r in inserts if r["system"] == s), key=lambda r: r["clients"])
            xs = [r["clients"] for r in rows]
            ax1.plot(xs, [r["ops_per_s"] for r in rows], marker="o", label=s)
            ax2.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{s} p50")
            ax2.plot(xs, [r["p99_ms"] for r in rows], marker="x", linestyle="--", label=f"{s} p99")
        for ax, title in ((ax1, "one-row writes/s"), (ax2, "latency ms")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("closed-loop clients")
            ax.set_title(title)
            ax.legend()
            ax.grid(True, alpha=0.3)
        path = out_dir / "throughput_latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    with_cdf = [r for r in inserts if r.get("cdf_ms")]
    if with_cdf:
        fig, ax = plt.subplots(figsize=(8, 4))
        for r in sorted(with_cdf, key=lambda r: (r["system"], r["clients"])):
            ax.plot([ms for _, ms in r["cdf_ms"]], [q for q, _ in r["cdf_ms"]],
                    label=f"{r['system']} x{r['clients']}")
        ax.set_xscale("log")
        ax.set_xlabel("write latency (ms)")
        ax.set_ylabel("fraction of writes")
        ax.set_title("latency CDF, one-row writes")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        path = out_dir / "latency_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    lag = doc.get("lag_over_time") or []
    if lag:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([t for t, _ in lag], [v for _, v in lag], ".", markersize=3)
        ax.set_xlabel("seconds into the load")
        ax.set_ylabel("leader applied -> all followers applied (ms)")
        ax.set_title("replication lag under load")
        ax.grid(True, alpha=0.3)
        path = out_dir / "replication_lag.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
