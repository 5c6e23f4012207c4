"""`python -m msdn_tune.space > search_spaces/schema.json`: regenerate the shipped schema."""

import json

from msdn_tune.space.schema import json_schema

print(json.dumps(json_schema(), indent=2))
