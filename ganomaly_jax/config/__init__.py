"""The config: its schema (`schema`), big_vision-style argument strings and config files
(`arguments`), the checks before anything compiles (`checks`) and parameter counts (`param_count`)."""
