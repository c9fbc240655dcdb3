# Figures of a study, drawn from all of its run stores (analysis.figures). The three figures every study has come
# from one job (one load of the stores); the sweep figures apply only to the studies that sweep what they show
# (sim.study.study_figures, called by final_targets in common.smk).


rule figures:
    input:
        stores=study_stores,
    output:
        angle_layers=report(
            "results/{study}/figures/angle_layers.png",
            caption="../report/angle_layers.rst",
            category="{study}",
            subcategory="angle to BP",
        ),
        angle_steps=report(
            "results/{study}/figures/angle_steps.png",
            caption="../report/angle_steps.rst",
            category="{study}",
            subcategory="angle to BP",
        ),
        accuracy=report(
            "results/{study}/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="{study}",
            subcategory="accuracy",
        ),
    log:
        "logs/{study}/figures/figures.log",
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/figure.py"


rule figure_noise_map:
    input:
        stores=study_stores,
    output:
        noise_map=report(
            "results/{study}/figures/noise_map.png",
            caption="../report/noise_map.rst",
            category="{study}",
            subcategory="sweep",
        ),
    log:
        "logs/{study}/figures/noise_map.log",
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/figure.py"


rule figure_mixing:
    input:
        stores=study_stores,
    output:
        mixing=report(
            "results/{study}/figures/mixing.png",
            caption="../report/mixing.rst",
            category="{study}",
            subcategory="sweep",
        ),
    log:
        "logs/{study}/figures/mixing.log",
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/figure.py"
