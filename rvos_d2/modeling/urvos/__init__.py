"""Parts of URVOS (Seo et al., ECCV 2020): coordinates, attention modules, memory encoder,
feature pyramid decoder, loss and the two-stage inference's memory."""
