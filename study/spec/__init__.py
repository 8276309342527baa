"""The study spec: one YAML file, validated completely before Ray starts.

`load_spec(path)` imports the spec's plug-ins, then returns a typed `Spec` or
raises `SpecError` listing every problem, each naming the field (a dotted path)
and what is allowed. Inner code trusts the `Spec` it gets. The structure is one
typed definition (`study.spec.model`, pydantic v2): the sections below, with each
dataset's, model family's and method's options taken from their registries,
plug-ins included; `json_schema()` (`kdstudy schema`) is the same definition as
a JSON Schema for editors. An annotated example is `studies/quickstart.yaml`;
the fields are:

    name: str                      study name (letters, digits, - and _)
    description: str               what the study asks
    storage: str                   results root: a local path or a URI (s3://, gs://, file://)
    plugins: [str]                 modules (my_lab.kd), .py files or package folders (relative to
                                   the spec) that register methods, families, datasets
    dataset: {name, root, download, val_fraction, split_seed, train_subset, ...the entry's options}
             val_fraction: 0.01..0.5 (default 0.1) carves a validation split from the
             training set for selection; 0 trains on the whole training set with NO
             validation split: each trial's result is its last epoch and a search ranks
             trials by *test* accuracy (the protocol of the published CIFAR numbers,
             e.g. RepDistiller's) — choose it knowingly; rows show `selection: last_epoch`
    student: {family, size, ...the family's options}
    teachers: {family, sizes: [..], seeds, epochs, export_epochs: [..], weights: {size: path |
               {path, key, format, sha256}}, ...the family's options}
              weights: imported teachers (`trainables.imported`): those sizes are read from
              local weights files (relative to the spec's folder) and evaluated, not trained;
              the study records each file's sha256 (added to its spec.json), which keys the
              teacher's zoo entry
    train: {epochs, batch_size, optimizer, lr, weight_decay, momentum, nesterov,
            schedule, milestones, gamma, grad_clip, augment}
            augment: random crop + flip of image training batches (default true; the
            TAKD authors' plain-CNN recipe trains without)
    baseline: {}                   the no-KD student: runs on the confirm seeds (paired), searched
                                   like the methods when they search the recipe (see study.graph)
    search: {budget: stratified | joint, scheduler: auto | asha | none, grace_period,
             max_concurrent, seed, sampler: auto | tpe | qmc | gp | random, replicates,
             seeds_per_trial}
    methods: {<name>: {trials (0: no search, the fixed configuration is confirmed),
                       space: {<param>: value | {low, high, log} | {choices: [..]}},
                       teacher_sizes: [..], confirm_seeds, ...the method's spec_options
                       (takd: assistant_sizes)}}
             confirm_seeds: the first n of the shared confirm seeds (an expensive method can
             take fewer; still paired with the baseline on those seeds)
             `methods: {}` (the field is required, it may be empty) is a scratch-only
             study: the teacher ladder (if `teachers` is given) and the baseline
    confirm: {seeds (>= 1), top_k}   seeds shared by the baseline and every confirm run; the top_k
                                   configurations of each search (on validation) are confirmed
    verdict: {delta, level}        smallest effect of interest (accuracy points), confidence level
    resources: {cpu, gpu (a fraction of one GPU, 0..1), max_experiments}
    runtime: {device, precision: auto | fp32 | tf32 | bf16, compile, channels_last, checkpoint_every_s}
    failure: {max_failures}
    report: {png}
    tracking: {mlflow: {uri, experiment}, wandb: {project, entity, mode, group},
               tensorboard: {dir} | true}   trackers the rows are also sent to (not study content)
"""

from ..ranges import Range
from .errors import SpecError
from .loading import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES, SpecLoader, SpecYAMLError, load_yaml
from .model import (BUDGETS, COMMON_HPARAMS, DEVICES, MAX_SEARCH_SEED, PRECISIONS, SAMPLERS, SCHEDULERS,
                    spec_models)
from .parse import MAX_PARAMS, load_spec, load_spec_plugins, parse_spec, spec_plugins
from .schema import json_schema, schema_text
from .view import TEACHER_LADDER_KEYS, MethodSpec, Spec, dataset_shape, teacher_model

__all__ = [
    "BUDGETS", "COMMON_HPARAMS", "DEVICES", "MAX_DEPTH", "MAX_NODES", "MAX_PARAMS", "MAX_SEARCH_SEED",
    "MAX_SPEC_BYTES", "PRECISIONS", "SAMPLERS", "SCHEDULERS", "TEACHER_LADDER_KEYS", "MethodSpec", "Range",
    "Spec", "SpecError", "SpecLoader", "SpecYAMLError", "dataset_shape", "json_schema", "load_spec",
    "load_spec_plugins", "load_yaml", "parse_spec", "schema_text", "spec_models", "spec_plugins",
    "teacher_model",
]
