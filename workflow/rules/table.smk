# The results table of a study: final train/test accuracy per experiment, sweep point and rule, over seeds.


rule table:
    input:
        stores=study_stores,
    output:
        markdown="results/{study}/table.md",
        csv=report(
            "results/{study}/table.csv",
            caption="../report/table.rst",
            category="{study}",
            subcategory="table",
        ),
    log:
        "logs/{study}/table.log",
    conda:
        "../envs/gaitsim.yaml"
    script:
        "../scripts/table.py"
