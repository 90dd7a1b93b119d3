# One rule per stage kind (utils.study.KINDS): the study's stages of that kind, each a call of one top-level script.
# The target of a stage is a stamp the engine touches when the script has finished: the scripts' checkpoints
# and models are never the engine's outputs, so it never deletes a half-trained run before resuming it.
import shlex

from utils.study import KINDS, TEST


def stage_inputs(kind):
    return lambda wildcards: PLAN.inputs(kind, wildcards.seed, wildcards.name)


def stage_command(kind):
    return lambda wildcards: PLAN.shell_command(kind, wildcards.seed, wildcards.name)


def stage_flops_file(kind):
    return lambda wildcards: PLAN.flops_file((kind, wildcards.seed, wildcards.name))


def recorded_opening(kind):
    """After a seed's test evaluation: when its test split was opened, and under which study file (its SHA-256);
    the report refuses test results whose study file changed since (utils.study_report.check_preregistered)."""
    study = shlex.quote(str(Path(config["study"]).resolve()))

    def record(wildcards):
        if (kind, wildcards.name) != ("evaluate", TEST):
            return "true"
        log = shlex.quote(str(PLAN.openings(wildcards.seed)))
        return (f"mkdir -p $(dirname {log}) && printf '%s %s\\n' $(date -u +%Y-%m-%dT%H:%M:%SZ) "
                f"$(sha256sum {study} | cut -d' ' -f1) >> {log}")

    return record


for kind in KINDS:
    resources = PLAN.resources(kind)

    rule:
        name:
            kind
        input:
            stage_inputs(kind),
        output:
            touch(f"{PLAN.root}/stages/{{seed}}/{kind}/{{name}}.done"),
        threads: resources.pop("threads", 1)
        resources:
            **resources,
        log:
            f"{PLAN.root}/logs/{{seed}}/{kind}/{{name}}.log",
        benchmark:
            f"{PLAN.root}/benchmarks/{{seed}}/{kind}/{{name}}.tsv"
        params:
            command=stage_command(kind),
            flops=stage_flops_file(kind),
            opened=recorded_opening(kind),
        shell:
            # the shell ignores SLURM's early SIGTERM (the profile's --signal) and waits while the script checkpoints
            "trap '' TERM USR1; SITRA_FLOPS_FILE={params.flops} OMP_NUM_THREADS={threads} {params.command} > {log} 2>&1"
            " && {params.opened}"
