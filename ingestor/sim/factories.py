"""Factories: the simulator's own Stripe objects, one per kind, with Stripe's fields and sizes.

Field names, nesting and value shapes follow Stripe's API reference for API version
2026-10-28; the values are plausible test-mode data. Each factory takes the object's id and
`created` (unix seconds for v1 objects, RFC 3339 text for v2 ones) and may embed the id in
URLs, as Stripe does; everything else is fixed, so a kind's objects all have one size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Created = int | str
Factory = Callable[[str, Created], dict[str, Any]]

# Ids of objects a simulated object points at without the simulator serving them.
_ACCOUNT = "acct_1Sim0Platform0Account0"
_TXN = "txn_3SimBalanceTransact1on0A"
_PM = "pm_1SimCard4242Visa0000000"
_CUSTOMER = "cus_TsSimCustomer01"
_PRICE = "price_1SimMonthlyPlan00000000"
_PRODUCT = "prod_TsSimProduct01"
_BANK = "ba_1SimExternalBank00000000"


def _address() -> dict[str, Any]:
    return {
        "city": "San Francisco",
        "country": "US",
        "line1": "510 Townsend St",
        "line2": None,
        "postal_code": "94103",
        "state": "CA",
    }


def _empty_address() -> dict[str, Any]:
    return dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state"))


def _list(url: str, data: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"object": "list", "data": data or [], "has_more": False, "url": url}


def _card_details(amount: int) -> dict[str, Any]:
    return {
        "amount_authorized": amount,
        "authorization_code": "384711",
        "brand": "visa",
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": "pass",
            "cvc_check": "pass",
        },
        "country": "US",
        "exp_month": 8,
        "exp_year": 2030,
        "extended_authorization": {"status": "disabled"},
        "fingerprint": "Xt5EWLLDS7FJjR1c",
        "funding": "credit",
        "incremental_authorization": {"status": "unavailable"},
        "installments": {"plan": None},
        "last4": "4242",
        "mandate": None,
        "multicapture": {"status": "unavailable"},
        "network": "visa",
        "network_token": {"used": False},
        "network_transaction_id": "104557651805572",
        "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
        "regulated_status": "unregulated",
        "three_d_secure": {
            "authentication_flow": "frictionless",
            "electronic_commerce_indicator": "05",
            "exemption_indicator": None,
            "result": "authenticated",
            "result_reason": None,
            "transaction_id": "a5f9a3f1-6c2e-4e8a-9d1b-3c8f7e2b1a90",
            "version": "2.2.0",
        },
        "wallet": None,
    }


def charge(oid: str, created: Created) -> dict[str, Any]:
    amount = 2000
    return {
        "id": oid,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": _TXN,
        "billing_details": {
            "address": {**_empty_address(), "postal_code": "94103"},
            "email": "jenny.rosen@example.com",
            "name": "Jenny Rosen",
            "phone": None,
            "tax_id": None,
        },
        "calculated_statement_descriptor": "SIMULATED*SHOP",
        "captured": True,
        "created": created,
        "currency": "usd",
        "customer": _CUSTOMER,
        "description": "Subscription update",
        "destination": None,
        "dispute": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "order": None,
        "outcome": {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": "pi_3SimPaymentIntent000000",
        "payment_method": _PM,
        "payment_method_details": {"card": _card_details(amount), "type": "card"},
        "radar_options": {},
        "receipt_email": "jenny.rosen@example.com",
        "receipt_number": None,
        "receipt_url": (
            f"https://pay.example.com/receipts/payment/{oid}/CAcaFwoVYWNjdF8xU2ltUGxhdGZvcm0"
            "KI_ei7UGMgZv2S_KfiY6LCJrxC7awazgQA9I88krZKw5uuCkZ5Nup2tomEtAbSpdfzjVZHO3ZYP5KFZP"
        ),
        "refunded": False,
        "refunds": _list(f"/v1/charges/{oid}/refunds"),
        "review": None,
        "shipping": {
            "address": _address(),
            "carrier": "USPS",
            "name": "Jenny Rosen",
            "phone": "+14155550123",
            "tracking_number": "9400111899223100012345",
        },
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }


def _evidence() -> dict[str, Any]:
    fields = (
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    )
    return {**dict.fromkeys(fields), "enhanced_evidence": {}}


def dispute(oid: str, created: Created) -> dict[str, Any]:
    """The shape `POST /v1/disputes/:id/close` returns: evidence, evidence_details,
    balance_transactions and is_charge_refundable included."""
    return {
        "id": oid,
        "object": "dispute",
        "amount": 2000,
        "balance_transactions": [],
        "charge": "ch_3SimDisputedCharge000000",
        "created": created,
        "currency": "usd",
        "enhanced_eligibility_types": [],
        "evidence": _evidence(),
        "evidence_details": {
            "due_by": 1_799_999_999,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "network_reason_code": "10.4",
        "payment_intent": "pi_3SimDisputedCharge00000",
        "payment_method_details": {
            "card": {"brand": "visa", "case_type": "chargeback", "network_reason_code": "10.4"},
            "type": "card",
        },
        "reason": "fraudulent",
        "status": "needs_response",
    }


def refund(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "refund",
        "amount": 1000,
        "balance_transaction": _TXN,
        "charge": "ch_3SimRefundedCharge000000",
        "created": created,
        "currency": "usd",
        "destination_details": {
            "card": {"reference_status": "pending", "reference_type": "acquirer_reference_number"},
            "type": "card",
        },
        "livemode": False,
        "metadata": {},
        "payment_intent": "pi_3SimRefundedCharge00000",
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def customer(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "customer",
        "address": _address(),
        "balance": 0,
        "created": created,
        "currency": "usd",
        "customer_account": None,
        "default_source": None,
        "delinquent": False,
        "description": "Simulated customer",
        "discount": None,
        "email": "jenny.rosen@example.com",
        "invoice_prefix": "5F3C1A0B",
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": _PM,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": "Jenny Rosen",
        "next_invoice_sequence": 3,
        "phone": "+14155550123",
        "preferred_locales": ["en-US"],
        "shipping": {"address": _address(), "name": "Jenny Rosen", "phone": "+14155550123"},
        "tax_exempt": "none",
        "test_clock": None,
    }


def price(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": "usd",
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": "standard_monthly",
        "metadata": {},
        "nickname": "Standard (monthly)",
        "product": _PRODUCT,
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": 2000,
        "unit_amount_decimal": "2000",
    }


def product(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "product",
        "active": True,
        "created": created,
        "default_price": _PRICE,
        "description": "Comfortable gray cotton t-shirt",
        "images": [f"https://files.example.com/products/{oid}/front.png"],
        "livemode": False,
        "marketing_features": [{"name": "Organic cotton"}],
        "metadata": {},
        "name": "T-shirt",
        "package_dimensions": {"height": 2.0, "length": 30.0, "weight": 8.5, "width": 25.0},
        "shippable": True,
        "statement_descriptor": None,
        "tax_code": "txcd_99999999",
        "type": "service",
        "unit_label": None,
        "updated": created,
        "url": None,
    }


def _payment_method_options() -> dict[str, Any]:
    return {
        "acss_debit": None,
        "bancontact": None,
        "card": {"network": None, "request_three_d_secure": "automatic"},
        "customer_balance": None,
        "konbini": None,
        "sepa_debit": None,
        "us_bank_account": None,
    }


def subscription(oid: str, created: Created) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "si_TsSimSubItem0001",
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": created,
        "current_period_end": 1_799_999_999,
        "current_period_start": 1_797_321_600,
        "discounts": [],
        "metadata": {},
        "plan": {
            "id": _PRICE,
            "object": "plan",
            "active": True,
            "amount": 2000,
            "amount_decimal": "2000",
            "billing_scheme": "per_unit",
            "created": 1_767_225_600,
            "currency": "usd",
            "interval": "month",
            "interval_count": 1,
            "livemode": False,
            "metadata": {},
            "meter": None,
            "nickname": "Standard (monthly)",
            "product": _PRODUCT,
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "price": price(_PRICE, 1_767_225_600),
        "quantity": 1,
        "subscription": oid,
        "tax_rates": [],
    }
    return {
        "id": oid,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": created,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"flexible": None, "type": "classic"},
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "customer": _CUSTOMER,
        "customer_account": None,
        "days_until_due": None,
        "default_payment_method": _PM,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": _list(f"/v1/subscription_items?subscription={oid}", [item]),
        "latest_invoice": "in_1SimLatestInvoice0000000",
        "livemode": False,
        "metadata": {},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": _payment_method_options(),
            "payment_method_types": ["card"],
            "save_default_payment_method": "on_subscription",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": "active",
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def invoice(oid: str, created: Created) -> dict[str, Any]:
    line = {
        "id": "il_1SimInvoiceLine000000000",
        "object": "line_item",
        "amount": 2000,
        "currency": "usd",
        "description": "1 x T-shirt (at $20.00 / month)",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": oid,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": "sub_1SimSubscription00000000",
                "subscription_item": "si_TsSimSubItem0001",
            },
            "type": "subscription_item_details",
        },
        "period": {"end": 1_799_999_999, "start": 1_797_321_600},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": _PRICE, "product": _PRODUCT},
            "type": "price_details",
            "unit_amount_decimal": "2000",
        },
        "quantity": 1,
        "taxes": [],
    }
    return {
        "id": oid,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Simulated Shop",
        "account_tax_ids": None,
        "amount_due": 2000,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 2000,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "custom_fields": None,
        "customer": _CUSTOMER,
        "customer_account": None,
        "customer_address": _address(),
        "customer_email": "jenny.rosen@example.com",
        "customer_name": "Jenny Rosen",
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": f"https://invoice.example.com/i/{oid}",
        "invoice_pdf": f"https://pay.example.com/invoice/{oid}/pdf",
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": _list(f"/v1/invoices/{oid}/lines", [line]),
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": "5F3C1A0B-0002",
        "on_behalf_of": None,
        "parent": {
            "quote_details": None,
            "subscription_details": {
                "metadata": {},
                "subscription": "sub_1SimSubscription00000000",
            },
            "type": "subscription_details",
        },
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": _payment_method_options(),
            "payment_method_types": None,
        },
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": {"amount_tax_display": None, "pdf": {"page_size": "auto"}, "template": None},
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": 2000,
        "subtotal_excluding_tax": 2000,
        "test_clock": None,
        "total": 2000,
        "total_discount_amounts": [],
        "total_excluding_tax": 2000,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": created,
    }


def payment_intent(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "payment_intent",
        "amount": 2000,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{oid}_secret_SimulatedClientSecret000",
        "confirmation_method": "automatic",
        "created": created,
        "currency": "usd",
        "customer": _CUSTOMER,
        "customer_account": None,
        "description": "Subscription update",
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": {
            "id": "pmc_1SimPaymentMethodConfig0",
            "parent": None,
        },
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            },
            "link": {"persistent_token": None},
        },
        "payment_method_types": ["card", "link"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }


def file(oid: str, created: Created) -> dict[str, Any]:
    links: list[dict[str, Any]] = [
        {
            "id": f"link_1SimFileLink000000000{n}",
            "object": "file_link",
            "created": created,
            "expired": False,
            "expires_at": None,
            "file": oid,
            "livemode": False,
            "metadata": {},
            "url": f"https://files.example.com/links/{oid}/MDB8YWNjdF8xU2ltUGxhdGZvcm0{n}",
        }
        for n in range(3)
    ]
    return {
        "id": oid,
        "object": "file",
        "created": created,
        "expires_at": None,
        "filename": "evidence.png",
        "links": _list(f"/v1/file_links?file={oid}", links),
        "purpose": "dispute_evidence",
        "size": 9863,
        "title": None,
        "type": "png",
        "url": f"https://files.example.com/v1/files/{oid}/contents",
    }


def billing_meter(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "billing.meter",
        "created": created,
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": "sum"},
        "display_name": "API requests",
        "event_name": "api_requests",
        "event_time_window": None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": created,
        "value_settings": {"event_payload_key": "value"},
    }


def payout(oid: str, created: Created) -> dict[str, Any]:
    return {
        "id": oid,
        "object": "payout",
        "amount": 118_200,
        "application_fee": None,
        "application_fee_amount": None,
        "arrival_date": created,
        "automatic": True,
        "balance_transaction": _TXN,
        "created": created,
        "currency": "usd",
        "description": "STRIPE PAYOUT",
        "destination": _BANK,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "method": "standard",
        "original_payout": None,
        "payout_method": None,
        "reconciliation_status": "completed",
        "reversed_by": None,
        "source_type": "card",
        "statement_descriptor": None,
        "status": "pending",
        "trace_id": {"status": "pending", "value": None},
        "type": "bank_account",
    }


def _requirements(due: list[str]) -> dict[str, Any]:
    return {
        "alternatives": [],
        "current_deadline": None,
        "currently_due": due,
        "disabled_reason": "requirements.past_due" if due else None,
        "errors": [],
        "eventually_due": due,
        "past_due": due,
        "pending_verification": [],
    }


def account(oid: str, created: Created) -> dict[str, Any]:
    """A v1 connected account, as `GET /v1/accounts` lists it."""
    return {
        "id": oid,
        "object": "account",
        "business_profile": {
            "annual_revenue": None,
            "estimated_worker_count": None,
            "mcc": "5734",
            "minority_owned_business_designation": None,
            "name": "Simulated Connected Shop",
            "product_description": "Software subscriptions",
            "support_address": _address(),
            "support_email": "support@example.com",
            "support_phone": "+14155550123",
            "support_url": None,
            "url": "https://shop.example.com",
        },
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "controller": {"type": "application", "is_controller": True},
        "country": "US",
        "created": created,
        "default_currency": "usd",
        "details_submitted": True,
        "email": "owner@example.com",
        "external_accounts": _list(f"/v1/accounts/{oid}/external_accounts"),
        "future_requirements": _requirements([]),
        "livemode": False,
        "metadata": {},
        "payouts_enabled": True,
        "requirements": _requirements([]),
        "settings": {
            "bacs_debit_payments": {"display_name": None, "service_user_number": None},
            "branding": {
                "icon": None,
                "logo": None,
                "primary_color": "#635bff",
                "secondary_color": None,
            },
            "card_issuing": {"tos_acceptance": {"date": None, "ip": None}},
            "card_payments": {
                "decline_on": {"avs_failure": False, "cvc_failure": True},
                "statement_descriptor_prefix": "SIMSHOP",
                "statement_descriptor_prefix_kana": None,
                "statement_descriptor_prefix_kanji": None,
            },
            "dashboard": {"display_name": "Simulated Shop", "timezone": "Etc/UTC"},
            "invoices": {"default_account_tax_ids": None, "hosted_payment_method_save": "offer"},
            "payments": {
                "statement_descriptor": "SIMULATED SHOP",
                "statement_descriptor_kana": None,
                "statement_descriptor_kanji": None,
            },
            "payouts": {
                "debit_negative_balances": True,
                "schedule": {"delay_days": 2, "interval": "daily"},
                "statement_descriptor": None,
            },
            "sepa_debit_payments": {},
        },
        "tos_acceptance": {"date": 1_767_225_600, "ip": "203.0.113.7", "user_agent": None},
        "type": "custom",
    }


def v2_account(oid: str, created: Created) -> dict[str, Any]:
    """A v2 Account (`GET /v2/core/accounts/:id`); `created` is RFC 3339 text."""
    return {
        "id": oid,
        "object": "v2.core.account",
        "applied_configurations": ["customer", "merchant"],
        "configuration": {
            "customer": {
                "automatic_indirect_tax": {"exempt": "none", "ip_address": None},
                "billing": {"invoice": {"next_sequence": 1, "prefix": "5F3C1A0B"}},
                "capabilities": {"automatic_indirect_tax": {"status": "active"}},
                "shipping": None,
            },
            "merchant": {
                "capabilities": {"card_payments": {"status": "active", "status_details": []}},
                "card_payments": {"decline_on": {"avs_failure": False, "cvc_failure": True}},
                "mcc": "5734",
                "statement_descriptor": {"descriptor": "SIMULATED SHOP", "prefix": "SIMSHOP"},
                "support": {"email": "support@example.com", "phone": "+14155550123"},
            },
            "recipient": None,
        },
        "contact_email": "jenny.rosen@example.com",
        "created": created,
        "dashboard": "full",
        "defaults": {
            "currency": "usd",
            "locales": ["en-US"],
            "profile": {
                "business_url": "https://shop.example.com",
                "doing_business_as": "Simulated Shop",
                "product_description": "Software subscriptions",
            },
            "responsibilities": {"fees_collector": "stripe", "losses_collector": "stripe"},
        },
        "display_name": "Simulated Account",
        "identity": {
            "attestations": None,
            "business_details": {
                "address": _address(),
                "registered_name": "Simulated Shop, Inc.",
                "structure": "private_corporation",
            },
            "country": "us",
            "entity_type": "company",
        },
        "livemode": False,
        "metadata": {},
        "requirements": {"entries": [], "summary": {"minimum_deadline": None}},
    }


def application(oid: str, created: Created) -> dict[str, Any]:
    """A Connect platform's application, as account.application.* events carry it."""
    return {
        "id": oid,
        "object": "application",
        "created": created,
        "livemode": False,
        "metadata": {},
        "name": "Simulated platform",
    }


FACTORIES: dict[str, Factory] = {
    "account": account,
    "billing.meter": billing_meter,
    "charge": charge,
    "customer": customer,
    "dispute": dispute,
    "file": file,
    "invoice": invoice,
    "payment_intent": payment_intent,
    "payout": payout,
    "application": application,
    "price": price,
    "product": product,
    "refund": refund,
    "subscription": subscription,
    "v2.core.account": v2_account,
}


def build(kind: str, oid: str, created: Created) -> dict[str, Any]:
    """The object of `kind` (Stripe's `object` value) with this id and creation time."""
    return FACTORIES[kind](oid, created)
