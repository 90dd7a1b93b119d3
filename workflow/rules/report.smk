# The study's results as data: every seed's evaluation into one tidy table of models and one of the study's
# paired comparisons (make_report.py --study), the report's pages beside them.
report_resources = PLAN.resources("report")


rule report:
    input:
        PLAN.inputs("report"),
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
