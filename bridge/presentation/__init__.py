"""How values are presented: topic names and payloads, the entity table, discovery and Homie."""
