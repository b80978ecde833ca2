import dagster as dg

# One partition per source recording; the key is the sanitised folder name (lib.keys).
# The name is instance-wide state: renaming it orphans every registered recording.
recordings = dg.DynamicPartitionsDefinition(name="recordings")
