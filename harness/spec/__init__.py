"""A sweep spec from YAML to one resolved RunSpec per trial: the schema (pydantic, unknown
keys refused), safe YAML loading and `--set` overrides (`schema`), and the plan of variants
and trials (`plan`)."""
