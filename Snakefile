# gaitsim workflow: train every run of a study, then draw its figures and table (docs/workflow.md).
#
#   snakemake --cores all                                   # the quick study on the embedded digits (CPU, minutes)
#   snakemake --cores all --configfile config/paper.yaml    # the paper's CIFAR-10 (and ImageNet) runs
#   snakemake --report report.html                          # figures and table with captions
#
# Wiring only: the input functions live in workflow/rules/common.smk (the studies are expanded by sim/study.py),
# one stage per workflow/rules/*.smk.

from snakemake.utils import min_version, validate

min_version("9.0")


# the default study; `--configfile FILE` extends it (every config names its `study`). Found from the Snakefile, so
# that `--directory DIR` (outputs elsewhere) still reads it.
configfile: f"{workflow.basedir}/config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")  # each run: once, by check_configs (sim.study.check_runs)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/run.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/table.smk"


from sim.rules.registry import RULE_NAME  # after common.smk put this repo on sys.path


wildcard_constraints:
    study=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    experiment=EXPERIMENT,  # sim.study: a name and its sweep point's key~value folders
    rule=rf"{RULE_NAME}(\+{RULE_NAME})?",  # a rule, or a below+above mixture
    seed=r"[0-9]+",


rule all:
    input:
        final_targets(),
    default_target: True
    localrule: True
