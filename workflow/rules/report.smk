# The study's results as data: every seed's evaluation into one tidy table of models and one of the study's
# paired comparisons (make_report.py --study), the report's pages beside them.
report_resources = PLAN.resources("report")
peak_resources = PLAN.resources("default")


# the machine's matmul peak in fp32 and bf16, measured where the training stages run (their default resources):
# what each stage's achieved FLOP/s is read against in data/stage_times.csv
rule peak:
    output:
        f"{PLAN.root}/data/matmul_peak.json",
    params:
        command=f"{PLAN.python} {REPO / 'bench' / 'matmul_peak.py'} --output {PLAN.root / 'data'}",
    threads: peak_resources.pop("threads", 1)
    resources:
        **peak_resources,
    log:
        f"{PLAN.root}/logs/peak.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.command} --threads {threads} > {log} 2>&1"


rule report:
    input:
        PLAN.inputs("report"),
        f"{PLAN.root}/data/matmul_peak.json",
    output:
        **{name: str(path) for name, path in PLAN.data_files.items()},
    params:
        command=PLAN.shell_command("report"),
    threads: report_resources.pop("threads", 1)
    resources:
        **report_resources,
    log:
        f"{PLAN.root}/logs/report.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.command} > {log} 2>&1"
