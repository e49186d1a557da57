"""steelseg ground floor: the Severstal format and everything both stages share."""
