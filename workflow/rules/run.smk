# Runs: one job per run. All run configs of a study are first checked together by sim.config.load_config (what a
# JSON schema cannot see: rules per layer, probe epochs, preset options), so a bad config stops the study before any
# run job starts; then each run's config is written and sim.run.run writes and publishes its store. The job by hand:
# `python -m sim lease -- python -m sim run <folder>/config.yaml --out <folder>/run.zarr --publish
# --on-diverge {fail,keep} --quiet --log <log>`. The runtime settings (device, lease timeout) and the study's
# on_diverge reach the job through the config, not params: changing them must not rerun finished runs.
# A run of an experiment with `gpus: N` (N > 1, device cuda or auto) is rule run_parallel's instead: N GPUs leased
# together and `torchrun --nproc-per-node N -m sim run ...` (docs/runs.md, "Several GPUs"); the {experiment}
# patterns (sim.study.experiment_pattern) give each store to exactly one of the two rules.


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
        init_from=run_init_from,
    output:
        store=directory(f"{RUN}/run.zarr"),
    log:
        f"{RUN_LOGS}/run.log",
    wildcard_constraints:
        experiment=experiment_pattern(SEVERAL_GPUS, several=False),
    threads: 1
    resources:
        gpu=gpu_request(),
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/run.py"


rule run_parallel:
    input:
        config=f"{RUN}/config.yaml",
        init_from=run_init_from,
    output:
        store=directory(f"{RUN}/run.zarr"),
    log:
        f"{RUN_LOGS}/run.log",
    wildcard_constraints:
        experiment=experiment_pattern(SEVERAL_GPUS, several=True),
    threads: 1
    resources:
        gpu=run_gpus,
        on_diverge=run_on_diverge,
        lease=lease_options(),
    conda:
        "../envs/gaitsim.yaml"
    shell:
        # torchrun's own messages (and its report of a failed process) go to the job's stderr, the run's to {log}
        "python -m sim lease --gpus {resources.gpu} {resources.lease} -- "
        "python -m torch.distributed.run --standalone --nproc-per-node {resources.gpu} "
        "-m sim run {input.config:q} --out {output.store:q} --publish --on-diverge {resources.on_diverge} --quiet "
        "--log-file {log:q}"
