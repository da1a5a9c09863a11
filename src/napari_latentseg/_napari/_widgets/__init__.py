"""The napari user interface: one "LatentSeg" dock with sections in workflow order.

Why one dock and not four widgets
---------------------------------
A clinician works through one sequence - open a scan, get a model, look at the reconstruction,
then segment - and every step depends on two things chosen before: *which scan* and *which
model*. One dock shows both at all times (the scan picker and its modality, shape and spacing
sit above the sections; the active model is named in the Model section), so no step can run on
a scan or model the user did not mean. The steps are collapsible sections numbered in the order
they are used, so the dock reads top to bottom like a protocol and the user folds away what
they are done with. A task bar pinned below the sections shows the progress of the job the user
waits on and holds its Stop button; those jobs run one at a time. A fit (minutes) has its own
bar above it and runs alongside, so the user segments on the ilastik features while the VAE
fits instead of waiting; only one fit runs at a time, which is what a 2-core laptop can
afford. Separate docks would each need their own scan/model pickers, would let two fits
compete for the same CPU, and would clutter the window with four panels.

Modules
-------
``_dock``
    :class:`~._dock.LatentSegWidget`, the dock (the npe2 widget contribution) and its shared
    state: scan picker, models of this session, feature cache, task bars (main and fit).
``_scan``, ``_model``, ``_reconstruct``, ``_segment``
    The four sections; each is a thin QWidget calling the core generators through the task bar.
``_tasks``
    :class:`~._tasks.TaskBar`: runs a core generator in a napari thread worker with progress
    and Stop.
``_loss_plot``
    A small live loss curve painted with QPainter.
``_pickers``
    Layer pickers (combo box, check list) that follow the viewer's layer list.
``_base``
    The sections' base class (job buttons disabled while a job runs) and layout helpers.
``_layers``
    Layer helpers without Qt: geometry copied from the source layer, the plugin's own output
    layers (updated on re-run), friendly error sentences.

Nothing in this package imports torch at module level; importing it imports Qt, so napari's
start-up hooks (reader, writer, sample data) live elsewhere and never import it.
"""
