"""Shard writing, streaming readers, decoders, collation and packing, synthetic sets.

Write shards (tar files in the webdataset layout, ``sizes.json`` beside them)::

    mm shards synth vl -o data/vl -n 5000          # or av / text: deterministic synthetic sets
    mm shards build image-text photos/ -o data/photos --maxcount 10000   # or vqa / video / text

Read them, resumably, on any number of ranks and workers::

    from data_pipelines.readers.image_text import ImageTextReaderConfig, build_image_text_reader
    from data_pipelines.stream import StreamConfig

    cfg = ImageTextReaderConfig(stream=StreamConfig(shards=["data/vl"], batch_size=64,
                                                    samples_per_epoch=1_000_000, num_workers=4))
    source = build_image_text_reader(cfg)
    source.load_state_dict(checkpoint["data"])      # on resume
    for batch in source:                             # one epoch; equal batch counts on all ranks
        ...
        checkpoint["data"] = source.state_dict()     # the position after this batch
        log(source.metrics())                        # samples decoded, skips by reason

Modules: ``shards/`` (writer, build, spec, tar_stream), ``synthetic/`` (vl, av, text),
``decode/`` (image, video, audio), ``readers/`` (text, image_text, vqa, video), ``stream`` (the
stages and their config), ``stateful`` (the resumable multi-worker loader), ``errors`` (counted
skips), ``collate``/``packing`` (batch formats), ``tokenizers`` (ByteTokenizer).
"""
