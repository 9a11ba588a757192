"""`isep compare`: the runs logged to MLflow as a statistical report.

The data flow, one module each:

- `store`     the MLflow store, opened read-only (a local sqlite store is read from a snapshot),
              through MLflow's public client; experiments and runs, paged;
- `frames`    runs → pandas DataFrames: one row per run, one row per evaluation; each run's score
              (`--score final | last:K | auc`) and why a run is left out;
- `stats`     the statistics (scipy's `stats.bootstrap`): IQM, stratified-bootstrap CIs,
              probability of improvement, performance profiles;
- `analysis`  cells (task × variant) with their CIs, the comparisons with λ = 0, the across-task
              aggregates and the verdict lines;
- `reference` the paper's Tables 1-2 (`paper_tables.csv`) or one's own table, matched to the tasks;
- `tables`    the Markdown tables; `report` report.md, the CSVs and the console text;
- `plots`     the figures (score against λ, learning curves, performance profiles, probability of
              improvement); `cli` the command.

Lightning is never imported here (it costs ≈ 4.5 s).
"""
