#pragma once
// Activations as Eigen array expressions (vectorised erf, exp, logistic): act(a) and act'(a) for each tag of
// policies/activations.hpp.
#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <cmath>

#include "xtr/policies/activations.hpp"

namespace xtr::cpu {

template <class A>
struct ActivationMath;

template <>
struct ActivationMath<act::Gelu> {
  // gelu(a) = a Φ(a) = a/2 · (1 + erf(a/√2));  gelu'(a) = Φ(a) + a φ(a)
  template <class X>
  static auto value(const X& a) {
    using S = typename X::Scalar;
    return S(0.5) * a * (S(1) + (a * S(M_SQRT1_2)).erf());
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return S(0.5) * (S(1) + (a * S(M_SQRT1_2)).erf()) + a * (S(-0.5) * a.square()).exp() * S(0.3989422804014327);
  }
};

template <>
struct ActivationMath<act::Silu> {
  // silu(a) = a σ(a);  silu'(a) = σ(a) (1 + a (1 − σ(a)))
  template <class X>
  static auto value(const X& a) {
    return a * a.logistic();
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return a.logistic() * (S(1) + a * (S(1) - a.logistic()));
  }
};

template <>
struct ActivationMath<act::ReluSquared> {
  // relu²(a) = max(a, 0)²;  relu²'(a) = 2 max(a, 0)
  template <class X>
  static auto value(const X& a) {
    using S = typename X::Scalar;
    return a.max(S(0)).square();
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return S(2) * a.max(S(0));
  }
};

template <>
struct ActivationMath<act::Sigmoid> {
  // σ(a);  σ'(a) = σ(a) (1 − σ(a))
  template <class X>
  static auto value(const X& a) {
    return a.logistic();
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return a.logistic() * (S(1) - a.logistic());
  }
};

}  // namespace xtr::cpu
