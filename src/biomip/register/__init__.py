"""Registration (textbook ch. 7): transforms in physical space, similarity measures and
regularisers, and the methods of the chapter.

* transforms (:mod:`biomip.register.transforms`): rigid, affine, dense displacement, ITK ``.tfm`` /
  displacement-field exchange; :class:`BSplineField` (cubic FFD, analytic Jacobian);
* similarity and regularisers (:mod:`.losses`), usable as PyTorch losses;
* methods, each returning the transform, the warped image and a history:
  :func:`linear` (rigid / affine by MSE, NCC or mutual information),
  :func:`demons` (Thirion, symmetric, diffeomorphic), :func:`bspline` (FFD),
  :func:`svf` (log-domain diffeomorphic, LNCC), :func:`variational` (elastic,
  viscous-fluid and curvature registration with Fourier-domain solvers),
  :func:`lddmm` (time-varying velocities, simplified), :class:`LandmarkTransform`
  (thin-plate, Gaussian RBF, elastic body splines), :class:`DeformationModel` +
  :func:`subspace_register` (PCA statistical deformation model), and the learned
  VoxelMorph-style :class:`RegistrationNet` (:func:`train_registration`,
  :func:`learned_register`);
* from features and motion (book ch. 5): :func:`keypoint_registration` (SIFT / ORB
  matches + RANSAC; its transform starts :func:`linear`), :func:`optical_flow` (TV-L1,
  ILK, Horn-Schunck, Farneback, a learned :class:`~biomip.nn.FlowNet`) and
  :func:`track_points`;
* evaluation: :func:`evaluate`, :func:`endpoint_error`.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
