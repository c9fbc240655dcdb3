# Runs: one job per run. All run configs of a study are first checked together by sim.config.load_config (what a
# JSON schema cannot see: rules per layer, probe epochs, preset options), so a bad config stops the study before any
# run job starts; then each run's config is written and sim.run.run writes and publishes its store. The job by hand:
# `python -m sim lease -- python -m sim run <folder>/config.yaml --out <folder>/run.zarr --publish
# --on-diverge {fail,keep} --quiet --log <log>`. The runtime settings (device, lease timeout) and the study's
# on_diverge reach the job through the config, not params: changing them must not rerun finished runs.


rule check_configs:
    output:
        "results/{study}/run_configs.json",
    params:
        runs=study_run_configs,
    log:
        "logs/{study}/check_configs.log",
    localrule: True
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/check_configs.py"


rule run_config:
    input:
        # only the order matters: a change to one run's config must not rewrite the others
        ancient("results/{study}/run_configs.json"),
    output:
        f"{RUN}/config.yaml",
    params:
        run=run_config,
    log:
        f"{RUN_LOGS}/config.log",
    localrule: True
    run:
        write_run_config(output[0], params.run, log[0])


rule run:
    input:
        config=f"{RUN}/config.yaml",
    output:
        store=directory(f"{RUN}/run.zarr"),
    log:
        f"{RUN_LOGS}/run.log",
    threads: 1
    resources:
        gpu=gpu_request(),
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/run.py"
