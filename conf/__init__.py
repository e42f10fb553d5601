"""vaecli's config tree (``pkg://vaecli.conf``). Hydra imports this package before it reads a YAML
file, so this is where every registered model, objective and dataset puts its group schema into
Hydra's ConfigStore (``conf/model/mlp.yaml`` names ``mlp_schema``): the groups know every entry."""

from vaecli.data.registry import DATASETS
from vaecli.models.registry import MODELS
from vaecli.objectives.registry import OBJECTIVES

for _registry in (MODELS, OBJECTIVES, DATASETS):
    _registry.load()
