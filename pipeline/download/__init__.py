"""Stage `pipeline download`: URL lists -> WebDataset shards of the original image bytes.

`lists` reads the rows, `fetch` is the HTTP client, `sniff` names what came back, `stage`
drives it all through pipeline.runner.
"""

from pipeline.download.fetch import FetchSettings
from pipeline.download.stage import download

__all__ = ["FetchSettings", "download"]
