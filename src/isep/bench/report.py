"""`isep bench`'s Markdown table (`throughput.md`), from the result `isep.bench.throughput.run` returns."""

from __future__ import annotations


def markdown(result: dict) -> str:
    lines = [
        "| device | actor | λ | reference (CORL-style) | eager, loop | eager, `fit` | fit/loop time | fast, loop | "
        "fast, `fit` | fit/loop time | fast `fit` / reference | compile+capture s | kernels/update (ref → eager → fast) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ] if result["rows"] else []
    for r in result["rows"]:
        k = r.get("kernels_per_update", {})
        kernels = " → ".join(str(round(k[x])) for x in ("reference", "eager", "fast") if x in k) or "–"
        lines.append(
            f"| {r['device']} | {r['actor']} | {r['lam']} | {r['reference']} | {r['eager_plain']} | {r['eager_fit']} | "
            f"{r['eager_fit_over_plain_time']} | {r['fast_plain']} ({r['fast_mode']}) | {r['fast_fit']} | "
            f"{r['fast_fit_over_plain_time']} | {r['fast_fit_over_reference']}× | {r['fast_setup_s']} | {kernels} |"
        )
    lines.append("\nUpdates/s, median of the timed windows; batch 256, walker2d shapes, Appendix C networks.")
    if result.get("stacked"):
        lines += ["", "| device | actor | λ | stacked runs | mode | updates/s per run | aggregate updates/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['actor']} | {r['lam']} | {r['runs']} | {r['mode']} | {r['updates_per_s']} | "
                  f"{r['aggregate_updates_per_s']} |" for r in result["stacked"]]
    if result.get("processes"):
        lines += ["", "| actor | λ | N | N processes (1 thread each), aggregate | N stacked in 1 process, aggregate | speed-up |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['actor']} | {r['lam']} | {r['runs']} | {r['processes_aggregate_updates_per_s']} | "
                  f"{r['stacked_aggregate_updates_per_s']} ({r['stacked_threads']} threads) | {r['speedup']}× |"
                  for r in result["processes"]]
    if result.get("precision"):
        from isep.bench.roofline import markdown as precision_markdown

        lines += precision_markdown(result["precision"], result["matmul_peaks"])
    if result.get("draws"):
        from isep.bench.draw import markdown as draw_markdown

        lines += draw_markdown(result["draws"])
    if result["evaluation"]:
        lines += ["", "| device | actor (hidden) | precision | env | envs | env steps/s |", "|---|---|---|---|---|---|"]
        lines += [f"| {e['device']} | {e['actor']} {tuple(e['actor_hidden'])} | {e.get('precision', '32-true')} | "
                  f"{e['env']} | {e['num_envs']} | {e['env_steps_per_s']} |" for e in result["evaluation"]]
    return "\n".join(lines) + "\n"
