"""`isep sweep`: grids of `isep fit` runs on Ray Tune, resumable, recorded in one MLflow experiment."""
