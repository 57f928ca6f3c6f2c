"""The config: its schema (`schema`), big_vision-style argument strings and config files
(`arguments`), the checks before anything compiles (`checks`), parameter counts (`param_count`)
and the frozen view the jitted steps read (`frozen`)."""
