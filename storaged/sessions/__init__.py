"""Sessions, races and events (specs/sessions-and-races.md): records, queries and the per-race split job."""
