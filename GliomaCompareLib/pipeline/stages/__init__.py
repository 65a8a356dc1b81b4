"""The stages of a comparison run, one module each, in run order.

Each module ends with its :class:`~GliomaCompareLib.pipeline.runner.Stage` object(s);
:func:`GliomaCompareLib.pipeline.run.build_stages` lists them::

    data -> split -> cnn_train (seg, cls) -> cnn_predict -> vlm_infer (base) -> vlm_finetune
         -> vlm_infer (fine-tuned, consistency) -> metrics -> report
"""
